"""The providers admin API: list every provider, add, change, switch off and delete the
admin's (README, "Providers and routing"; logic in `satsrouter/admin/providers.py`).

Keys never leave the node: a provider's `api_key` shows as `"[redacted]"` or null. After
every change the node reloads its providers.
"""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from satsrouter.admin.providers import ProviderStore
from satsrouter.http.admin import admin_router, json_response
from satsrouter.jsonbody import json_object
from satsrouter.node import Node

router = admin_router()


def _store(request: Request) -> tuple[Node, ProviderStore]:
    node: Node = request.app.state.node
    return node, ProviderStore(node.tx)


@router.get("/providers")
async def list_providers(request: Request) -> Response:
    """Every provider (environment, providers file, admin) with its source; keys redacted."""
    node, store = _store(request)
    return json_response(await store.list(node.settings))


@router.put("/providers/{name}")
async def put_provider(request: Request, name: str) -> Response:
    """Create or replace the admin's provider `name` (its key stored encrypted)."""
    node, store = _store(request)
    body = json_object(await request.body())
    shown = await store.put(node.settings, name, body)
    await node.reload_providers()
    return json_response(shown)


@router.patch("/providers/{name}")
async def patch_provider(request: Request, name: str) -> Response:
    """Change some fields, e.g. `{"enabled": false}`; over a file or environment provider
    the change is an override the admin wins with."""
    node, store = _store(request)
    body = json_object(await request.body())
    shown = await store.patch(node.settings, name, body)
    await node.reload_providers()
    return json_response(shown)


@router.delete("/providers/{name}")
async def delete_provider(request: Request, name: str) -> Response:
    """Delete the admin's provider or override `name` (409 for a file's or environment's)."""
    node, store = _store(request)
    await store.delete(node.settings, name)
    await node.reload_providers()
    return json_response({"deleted": name})


@router.put("/routes")
async def put_routes(request: Request) -> Response:
    """Set the admin's routes: `{public model id: [provider names, in order]}`."""
    node, store = _store(request)
    body = json_object(await request.body())
    shown = await store.put_routes(node.settings, body)
    await node.reload_providers()
    return json_response(shown)
