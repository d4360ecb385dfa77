"""The seed's settings admin API: read every setting, change the live ones (API.md, "Admin").

Names are the lower-case environment names; what may change and how it is checked, stored
and applied is `satsrouter/admin/live_settings.py`.
"""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from satsrouter.admin.live_settings import InvalidSettings
from satsrouter.errors import ApiError
from satsrouter.http.admin import admin_router, json_response
from satsrouter.jsonbody import json_object
from satsrouter.node import Node

router = admin_router()


class SettingsRefused(ApiError):
    """422 `invalid_settings`, with `fields` (each refused setting and why) in the envelope."""

    def __init__(self, fields: dict[str, str]) -> None:
        names = ", ".join(sorted(fields))
        super().__init__(422, "invalid_settings", f"Settings refused, nothing changed: {names}.")
        self.fields = fields

    def envelope(self) -> dict[str, object]:
        """The usual envelope plus `error.fields`."""
        error = {"message": self.message, "type": self.code, "code": self.status}
        return {"error": {**error, "fields": self.fields}}


@router.get("/settings")
async def get_settings(request: Request) -> Response:
    """Every setting by name, as in effect now; secrets redacted."""
    node: Node = request.app.state.node
    return json_response(node.live_settings.flat())


@router.get("/settings/schema")
async def settings_schema(request: Request) -> Response:
    """Each setting's docs, type, whether the admin may change it, and where it comes from."""
    node: Node = request.app.state.node
    return json_response({"settings": node.live_settings.schema()})


@router.patch("/settings")
async def patch_settings(request: Request) -> Response:
    """`{name: value | null}`: stored, applied at once; null goes back to the environment."""
    node: Node = request.app.state.node
    body = json_object(await request.body())
    try:
        await node.live_settings.patch(body)
    except InvalidSettings as exc:
        raise SettingsRefused(exc.fields) from None
    return json_response(node.live_settings.flat())
