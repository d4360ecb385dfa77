"""`/openapi.json`: the node's real API, paid endpoints included, as OpenAPI 3.1.

The handlers read raw bodies (no pydantic on the hot path), so FastAPI cannot infer their
schemas. They are written here by hand, from API.md and what each handler accepts, and the
document is built by walking the app's routes: every public route must have an entry in
`OPERATIONS` (keyed by its canonical path; aliases map to it), or building fails, so a new
route cannot go undescribed. Request schemas say what the node checks (types, bounds) and
leave the rest open (`additionalProperties`), as the node forwards unknown fields upstream.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from starlette.routing import Route

from satsrouter import __version__

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """An object schema open to further fields unless `extra` says otherwise."""
    schema: Schema = {"type": "object", "properties": props, **extra}
    if required:
        schema["required"] = list(required)
    return schema


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
POS_INT: Schema = {"type": "integer", "minimum": 1}
MSAT: Schema = {"type": "integer", "description": "millisatoshis"}
NULL_STR: Schema = {"type": ["string", "null"]}
NULL_NUM: Schema = {"type": ["number", "null"]}
NULL_INT: Schema = {"type": ["integer", "null"]}
ANY_OBJ: Schema = {"type": "object"}
STR_LIST: Schema = {"type": "array", "items": STR}

_USAGE_COST = {"cost": _ref("Cost")}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj(
        {
            "error": _obj(
                {
                    "message": STR,
                    "type": {"type": "string", "description": "stable error code"},
                    "code": {"type": "integer", "description": "the HTTP status"},
                    "fields": {"type": "object", "additionalProperties": STR},
                },
                ("message", "type", "code"),
            )
        },
        ("error",),
    ),
    "Cost": _obj(
        {
            name: MSAT
            for name in (
                "total_msats",
                "input_msats",
                "output_msats",
                "request_msats",
                "image_msats",
                "web_search_msats",
                "audio_msats",
            )
        },
        ("total_msats",),
        description="What the request cost, in msat, per component (each rounded up).",
    ),
    "ChatCompletionRequest": _obj(
        {
            "model": STR,
            "messages": {"type": "array", "items": ANY_OBJ},
            "max_tokens": POS_INT,
            "max_completion_tokens": POS_INT,
            "n": {"type": "integer", "minimum": 1, "maximum": 128},
            "stream": BOOL,
            "stream_options": _obj({"include_usage": BOOL}),
            "temperature": NUM,
            "tools": {"type": "array", "items": ANY_OBJ},
        },
        ("model", "messages"),
    ),
    "ChatCompletion": _obj(
        {
            "id": STR,
            "object": STR,
            "created": INT,
            "model": STR,
            "choices": {"type": "array", "items": ANY_OBJ},
            "usage": _obj(
                {"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT, **_USAGE_COST}
            ),
        },
        ("choices", "usage"),
    ),
    "CompletionRequest": _obj(
        {
            "model": STR,
            "prompt": {
                "anyOf": [
                    STR,
                    STR_LIST,
                    {"type": "array", "items": INT},
                    {"type": "array", "items": {"type": "array", "items": INT}},
                ]
            },
            "max_tokens": POS_INT,
            "n": {"type": "integer", "minimum": 1, "maximum": 128},
            "best_of": {"type": "integer", "minimum": 1, "maximum": 128},
            "stream": BOOL,
        },
        ("model", "prompt"),
    ),
    "Completion": _obj(
        {
            "id": STR,
            "object": STR,
            "choices": {"type": "array", "items": ANY_OBJ},
            "usage": _obj({"prompt_tokens": INT, "completion_tokens": INT, **_USAGE_COST}),
        },
        ("choices", "usage"),
    ),
    "EmbeddingRequest": _obj(
        {
            "model": STR,
            "input": {
                "anyOf": [
                    STR,
                    STR_LIST,
                    {"type": "array", "items": INT},
                    {"type": "array", "items": {"type": "array", "items": INT}},
                ]
            },
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": POS_INT,
        },
        ("model", "input"),
    ),
    "Embeddings": _obj(
        {
            "object": STR,
            "data": {"type": "array", "items": ANY_OBJ},
            "model": STR,
            "usage": _obj({"prompt_tokens": INT, "total_tokens": INT, **_USAGE_COST}),
        },
        ("data", "usage"),
    ),
    "ImageRequest": _obj(
        {
            "model": STR,
            "prompt": STR,
            "n": {"type": "integer", "minimum": 1, "maximum": 10},
            "size": STR,
            "quality": STR,
            "response_format": {"type": "string", "enum": ["url", "b64_json"]},
        },
        ("model", "prompt"),
    ),
    "Images": _obj(
        {
            "created": INT,
            "data": {"type": "array", "items": ANY_OBJ},
            "usage": _obj(_USAGE_COST),
        },
        ("data",),
    ),
    "AudioRequest": _obj(
        {
            "file": {"type": "string", "contentMediaType": "application/octet-stream"},
            "model": STR,
            "language": STR,
            "prompt": STR,
            "response_format": {
                "type": "string",
                "enum": ["json", "text", "srt", "verbose_json", "vtt"],
            },
            "temperature": NUM,
        },
        ("file", "model"),
    ),
    "Transcription": _obj({"text": STR, "usage": ANY_OBJ}, ("text",)),
    "ResponsesRequest": _obj(
        {
            "model": STR,
            "input": {"anyOf": [STR, {"type": "array", "items": ANY_OBJ}]},
            "instructions": STR,
            "max_output_tokens": POS_INT,
            "stream": BOOL,
            "tools": {"type": "array", "items": ANY_OBJ},
        },
        ("model", "input"),
    ),
    "Response": _obj(
        {
            "id": STR,
            "object": STR,
            "output": {"type": "array", "items": ANY_OBJ},
            "usage": _obj({"input_tokens": INT, "output_tokens": INT, **_USAGE_COST}),
        },
        ("usage",),
    ),
    "MessagesRequest": _obj(
        {
            "model": STR,
            "messages": {"type": "array", "items": ANY_OBJ},
            "max_tokens": POS_INT,
            "system": {"anyOf": [STR, {"type": "array", "items": ANY_OBJ}]},
            "stream": BOOL,
            "thinking": ANY_OBJ,
            "tools": {"type": "array", "items": ANY_OBJ},
        },
        ("model", "messages", "max_tokens"),
    ),
    "Message": _obj(
        {
            "id": STR,
            "type": STR,
            "role": STR,
            "content": {"type": "array", "items": ANY_OBJ},
            "model": STR,
            "stop_reason": NULL_STR,
            "usage": _obj({"input_tokens": INT, "output_tokens": INT, **_USAGE_COST}),
        },
        ("content", "usage"),
    ),
    "CountTokensRequest": _obj(
        {
            "model": STR,
            "messages": {"type": "array", "items": ANY_OBJ},
            "system": {"anyOf": [STR, {"type": "array", "items": ANY_OBJ}]},
            "tools": {"type": "array", "items": ANY_OBJ},
        },
        ("model", "messages"),
    ),
    "ServerSentEvent": _obj(
        {"event": STR, "data": {"type": "string", "description": "JSON, or [DONE]"}, "id": STR}
    ),
    "TokenCount": _obj({"input_tokens": INT}, ("input_tokens",)),
    "Model": _obj(
        {
            "id": STR,
            "object": {"const": "model"},
            "created": INT,
            "owned_by": STR,
            "name": STR,
            "provider": STR,
            "providers": {**STR_LIST, "description": "every provider that may serve it"},
            "context_length": INT,
            "architecture": ANY_OBJ,
            "top_provider": ANY_OBJ,
            "supported_parameters": STR_LIST,
            "pricing": {
                "type": "object",
                "additionalProperties": STR,
                "description": "USD per token/unit, exact decimal strings, fee included",
            },
            "sats_pricing": {"type": "object", "additionalProperties": NUM},
            "pricing_units": {"type": "object", "additionalProperties": STR},
            "max_cost": {"type": "number", "description": "sats: the most one request costs"},
        },
        ("id", "object", "pricing"),
    ),
    "ModelList": _obj(
        {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
        ("object", "data"),
    ),
    "Catalog": {
        "type": "object",
        "description": "Output modality -> providers, each with its models.",
        "additionalProperties": {
            "type": "array",
            "items": _obj(
                {
                    "provider": STR,
                    "configured": BOOL,
                    "models": {"type": "array", "items": _ref("Model")},
                },
                ("provider", "configured", "models"),
            ),
        },
    },
    "Provider": _obj(
        {
            "name": STR,
            "display_name": STR,
            "description": STR,
            "endpoints": STR_LIST,
            "features": STR_LIST,
            "status": STR,
            "last_checked": NULL_NUM,
            "latency_ms": NULL_NUM,
            "error_rate": NULL_NUM,
            "circuit": {"type": "string", "enum": ["closed", "open", "half_open"]},
            "exchange_latency_ms": NULL_NUM,
            "consecutive_failures": INT,
            "rate_limited": INT,
            "opened_at": NULL_INT,
            "configured": BOOL,
            "models": {"type": "array", "items": {"anyOf": [STR, ANY_OBJ]}},
        },
        ("name", "endpoints", "status", "models"),
    ),
    "Providers": _obj(
        {
            "providers": {"type": "array", "items": _ref("Provider")},
            "nodes": {
                "type": "array",
                "items": _ref("DiscoveredNode"),
                "description": "Other nodes announced on Nostr that answered their last health "
                "check (NOSTR_DISCOVERY; empty when off).",
            },
        },
        ("providers", "nodes"),
    ),
    "DiscoveredNode": _obj(
        {
            "name": STR,
            "about": STR,
            "npub": STR,
            "d": {**STR, "description": "the announcement's `d` tag"},
            "urls": STR_LIST,
            "http_url": NULL_STR,
            "onion_url": NULL_STR,
            "mints": STR_LIST,
            "version": NULL_STR,
            "announced_at": {**INT, "description": "the announcement's created_at (unix seconds)"},
            "status": {"type": "string", "enum": ["online"]},
            "checked_url": {**STR, "description": "the URL whose /v1/info and /v1/models answered"},
            "latency_ms": INT,
            "models": {**INT, "description": "how many models its /v1/models lists"},
        },
        ("name", "npub", "d", "urls", "mints", "status", "checked_url", "models"),
    ),
    "NodeInfo": _obj(
        {
            "name": STR,
            "description": STR,
            "version": STR,
            "npub": NULL_STR,
            "mints": STR_LIST,
            "http_url": STR,
            "onion_url": STR,
            "models": INT,
            "catalogue": ANY_OBJ,
            "exchange_rate": ANY_OBJ,
        },
        ("name", "version", "mints", "models"),
    ),
    "Hello": _obj(
        {"name": STR, "version": STR, "mints": STR_LIST, "api": STR}, ("name", "version")
    ),
    "TokenBody": _obj(
        {"cashu_token": STR, "initial_balance_token": STR},
        description="A Cashu token (cashuA/cashuB) in either field.",
    ),
    "NewKey": _obj(
        {
            "api_key": STR,
            "mint": STR,
            "unit": STR,
            "balance": INT,
            "balance_msat": MSAT,
            "currency": STR,
            "refund_address": NULL_STR,
            "expires_at": NULL_NUM,
        },
        ("api_key", "balance", "balance_msat", "currency"),
    ),
    "BalanceInfo": _obj(
        {
            "mint": STR,
            "unit": STR,
            "currency": {"type": "string", "description": "unit of the plain amount fields"},
            "balance": INT,
            "balance_msat": MSAT,
            "reserved": INT,
            "reserved_msat": MSAT,
            "available": INT,
            "available_msat": MSAT,
            "total_spent": INT,
            "total_spent_msat": MSAT,
            "total_requests": INT,
            "is_child": BOOL,
            "spend_limit_msat": NULL_INT,
            "period_spent_msat": NULL_INT,
        },
        ("balance", "balance_msat", "reserved_msat", "currency"),
    ),
    "Topup": _obj(
        {
            "msats": MSAT,
            "unit": STR,
            "balance": INT,
            "balance_msat": MSAT,
            "amount_added": INT,
            "amount_added_msat": MSAT,
            "added": INT,
            "currency": STR,
        },
        ("msats", "balance_msat", "amount_added_msat"),
    ),
    "WithdrawRequest": _obj(
        {
            "amount": {"type": "integer", "minimum": 1, "description": "in the key's unit"},
            "amount_msat": POS_INT,
        }
    ),
    "Payout": _obj(
        {
            "method": {"type": "string", "enum": ["cashu", "lightning"]},
            "mint": STR,
            "unit": STR,
            "msats": MSAT,
            "sats": INT,
            "amount": INT,
            "amount_msat": MSAT,
            "balance": INT,
            "balance_msat": MSAT,
            "token": NULL_STR,
            "cashu_token": NULL_STR,
            "recipient": NULL_STR,
            "currency": STR,
        },
        ("method", "msats", "amount_msat"),
    ),
    "History": _obj(
        {"entries": {"type": "array", "items": ANY_OBJ}, "unit": {"const": "msat"}},
        ("entries", "unit"),
    ),
    "ChildKeyRequest": _obj(
        {
            "count": POS_INT,
            "balance_limit": {"type": "integer", "minimum": 1, "description": "msat"},
            "balance_limit_reset": {"type": "string", "enum": ["daily", "weekly", "monthly"]},
            "validity_date": {"type": "number", "description": "Unix time"},
        }
    ),
    "ChildKeys": _obj(
        {
            "api_keys": STR_LIST,
            "count": INT,
            "balance_limit": NULL_INT,
            "balance_limit_reset": NULL_STR,
            "validity_date": NULL_NUM,
        },
        ("api_keys", "count"),
    ),
    "InvoiceRequest": _obj(
        {
            "amount_sats": POS_INT,
            "purpose": {"type": "string", "enum": ["create", "topup"]},
        },
        ("amount_sats",),
    ),
    "Invoice": _obj(
        {
            "invoice_id": STR,
            "bolt11": STR,
            "amount_sats": INT,
            "expires_at": INT,
            "purpose": STR,
        },
        ("invoice_id", "bolt11", "amount_sats", "expires_at", "purpose"),
    ),
    "InvoiceStatus": _obj(
        {
            "status": {"type": "string", "enum": ["pending", "paid", "expired"]},
            "purpose": STR,
            "amount_sats": INT,
            "created_at": INT,
            "expires_at": INT,
            "api_key": STR,
            "balance": MSAT,
        },
        ("status", "purpose", "amount_sats"),
    ),
    "LoginRequest": _obj({"password": STR}, ("password",)),
    "Ok": _obj({"ok": BOOL, "expires_at": NUM}, ("ok",)),
    "AdminSession": _obj({"authenticated": BOOL}, ("authenticated",)),
    "AdminNode": _obj(
        {
            "name": STR,
            "version": STR,
            "instance_id": STR,
            "npub": NULL_STR,
            "mints": STR_LIST,
            "providers": STR_LIST,
            "models": INT,
            "admin_password_from_environment": BOOL,
        },
        ("name", "version", "instance_id"),
    ),
    "Settings": {
        "type": "object",
        "description": "Every setting by its lower-case environment name; secrets redacted.",
    },
    "SettingsPatch": {
        "type": "object",
        "description": "{name: value | null}; null goes back to the environment or default.",
    },
    "SettingsSchema": _obj({"settings": {"type": "array", "items": ANY_OBJ}}, ("settings",)),
    "AdminWallet": _obj(
        {
            "mints": {"type": "array", "items": ANY_OBJ},
            "liabilities_msat": MSAT,
            "revenue": ANY_OBJ,
            "audit": ANY_OBJ,
        },
        ("mints", "liabilities_msat", "revenue", "audit"),
    ),
    "AdminWithdrawRequest": _obj(
        {
            "amount": {"type": "integer", "minimum": 1, "description": "sat"},
            "unit": {"const": "sat"},
            "mint_url": STR,
            "destination": {"type": "string", "description": "bolt11 or Lightning address"},
        },
        ("amount",),
    ),
    "AdminWithdrawal": _obj(
        {
            "id": STR,
            "method": STR,
            "token": NULL_STR,
            "amount": INT,
            "unit": STR,
            "mint_url": STR,
            "fee_msat": NULL_INT,
            "available_msat": MSAT,
        },
        ("id", "method", "amount"),
    ),
    "AdminWithdrawals": _obj(
        {"withdrawals": {"type": "array", "items": ANY_OBJ}}, ("withdrawals",)
    ),
    "Usage": _obj(
        {
            "since": {"type": ["string", "number"]},
            "totals": ANY_OBJ,
            "by_model": {"type": "array", "items": ANY_OBJ},
            "by_provider": {"type": "array", "items": ANY_OBJ},
            "by_day": {"type": "array", "items": ANY_OBJ},
        },
        ("totals", "by_model", "by_provider", "by_day"),
    ),
    "AdminKey": _obj(
        {
            "hash_prefix": STR,
            "kind": STR,
            "balance_msat": MSAT,
            "reserved_msat": MSAT,
            "disabled": BOOL,
        },
        ("hash_prefix",),
    ),
    "KeyRateLimit": _obj(
        {
            "rate_limit": {
                "type": ["string", "null"],
                "description": "`N/second|minute|hour|day` windows, `;`-separated; null: the "
                "node's RATE_LIMIT",
            }
        },
        ("rate_limit",),
        additionalProperties=False,
    ),
    "AdminKeys": _obj(
        {"keys": {"type": "array", "items": _ref("AdminKey")}, "total": INT}, ("keys", "total")
    ),
    "ProviderConfig": _obj(
        {
            "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
            "base_url": STR,
            "dialect": {"type": "string", "enum": ["openai", "openrouter", "anthropic", "ollama"]},
            "api_key": {
                "type": ["string", "null"],
                "description": "Sent in clear (stored encrypted, needs PROVIDER_SECRET); shown as "
                '"[redacted]" or null. Absent or "[redacted]" keeps the stored key; "" or null '
                "removes it.",
            },
            "fee": {"type": ["string", "number", "null"], "description": "> 0; null: PROVIDER_FEE"},
            "enabled": BOOL,
            "proxy": {"type": "string", "description": "socks5h://host:port and the like"},
            "connect_timeout": NULL_NUM,
            "first_byte_timeout": NULL_NUM,
            "idle_timeout": NULL_NUM,
            "model_prefix": STR,
            "models": {
                "type": "object",
                "additionalProperties": STR,
                "description": "public model id -> the provider's id",
            },
            "default_context": POS_INT,
            "default_pricing": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number"]},
                "description": "USD per token (or unit) by OpenRouter price field",
            },
        },
        description="One upstream provider. PUT needs base_url; PATCH takes any subset.",
    ),
    "AdminProvider": _obj(
        {
            "name": STR,
            "base_url": STR,
            "dialect": STR,
            "api_key": {"type": ["string", "null"], "description": '"[redacted]" or null'},
            "enabled": BOOL,
            "source": {"type": "string", "enum": ["environment", "file", "admin"]},
            "overrides": {
                "type": "array",
                "items": STR,
                "description": "fields an admin override sets on a file or environment provider",
            },
        },
        ("name", "base_url", "dialect", "api_key", "enabled", "source", "overrides"),
    ),
    "Routes": {
        "type": "object",
        "additionalProperties": {"type": "array", "items": STR, "minItems": 1},
        "description": "{public model id: [provider names, in the order to try]}",
    },
    "AdminProviders": _obj(
        {"providers": {"type": "array", "items": _ref("AdminProvider")}, "routes": _ref("Routes")},
        ("providers", "routes"),
    ),
    "AdminRoutes": _obj({"routes": _ref("Routes")}, ("routes",)),
    "Deleted": _obj({"deleted": STR}, ("deleted",)),
}

_STR_HEADER = {"schema": STR}
HEADERS: dict[str, Schema] = {
    "RequestId": {"description": "The request's id (every response).", **_STR_HEADER},
    "Cost": {"description": "What the request cost, msat.", "schema": {"type": "string"}},
    "Balance": {"description": "The key's balance after it, msat.", "schema": STR},
    "Change": {"description": "X-Cashu payers: the change, a Cashu token.", **_STR_HEADER},
    "Provider": {"description": "The provider that served the request.", **_STR_HEADER},
    "PaymentRequest": {
        "description": "NUT-24 payment request, NUT-18 `creqA…` (CBOR, base64url): `a` the "
        "request's maximum cost in whole sats (rounded up), `u` `sat`, `m` the accepted mints, "
        "`s` true; sent when the request carried no credentials.",
        **_STR_HEADER,
    },
    "RetryAfter": {"description": "Seconds to wait before retrying.", **_STR_HEADER},
    "RateLimitLimit": {"description": "Requests allowed in the tightest window.", **_STR_HEADER},
    "RateLimitRemaining": {"description": "Requests left in that window.", **_STR_HEADER},
    "RateLimitReset": {"description": "When that window resets (Unix time).", **_STR_HEADER},
}


def _error(description: str, **headers: str) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if headers:
        response["headers"] = {
            name: {"$ref": f"#/components/headers/{ref}"} for name, ref in headers.items()
        }
    return response


RESPONSES: dict[str, Schema] = {
    "BadRequest": _error(
        "Bad request: invalid JSON, a field of the wrong type, a bad token; an X-Cashu payment "
        "NUT-24 refuses (another mint, another unit, less than the payment request's amount: "
        "not redeemed; when a redeemed token's mint fee left too little, X-Cashu holds the "
        "rest).",
        **{"X-Cashu": "Change"},
    ),
    "Unauthorized": _error("Missing or unknown API key, token or admin login."),
    "PaymentRequired": _error(
        "Payment needed: insufficient balance (the message says current and required), or no "
        "credentials at all (then with an X-Cashu payment request).",
        **{"X-Cashu": "PaymentRequest"},
    ),
    "Forbidden": _error("The key is disabled or expired, or over a child key's limit."),
    "NotFound": _error("Unknown model, key, invoice or route."),
    "Conflict": _error("A conflicting operation on the same key or token is in progress."),
    "PayloadTooLarge": _error("The request body is over MAX_BODY_BYTES."),
    "HeadersTooLarge": _error("Request headers over the size or count limit (connection closed)."),
    "Unprocessable": _error(
        "Settings refused (error.fields says which and why), or a provider or route refused."
    ),
    "RateLimited": _error(
        "Rate limited (ours, or the upstream's passed through).",
        **{"Retry-After": "RetryAfter"},
    ),
    "BadGateway": _error("The upstream or the mint failed; nothing was charged."),
    "Unavailable": _error(
        "Temporarily unavailable: the mint is unreachable, no exchange rate, the node busy."
    ),
    "GatewayTimeout": _error("The upstream did not answer in time; nothing was charged."),
    "UpstreamRejected": _error("The upstream refused the request (its 4xx, passed through)."),
}

SECURITY_SCHEMES: dict[str, Schema] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer sk-…` (a stored balance) or a Cashu token "
        "(cashuA…/cashuB…), redeemed once into the balance it keys.",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "The same as Bearer (what Anthropic SDKs send).",
    },
    "cashu": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Cashu",
        "description": "A Cashu token paying for this one request; change in the answer's "
        "X-Cashu header (or the stream's last event).",
    },
    "adminSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "satsrouter_admin",
        "description": "The session cookie POST /admin/api/login sets.",
    },
    "adminPassword": {
        "type": "apiKey",
        "in": "cookie",
        "name": "admin_password",
        "description": "The admin password itself (the seed's form).",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "METRICS_TOKEN, for a Prometheus scraper.",
    },
}

PAYERS: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}, {"cashu": []}]
KEY_HOLDERS: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
ADMIN: list[dict[str, list[str]]] = [{"adminSession": []}, {"adminPassword": []}]


def _json(schema_name: str, description: str = "OK", **headers: str) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema_name)}},
    }
    if headers:
        response["headers"] = {
            name: {"$ref": f"#/components/headers/{ref}"} for name, ref in headers.items()
        }
    return response


def _body(schema_name: str, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _errors(*names: str) -> dict[str, Schema]:
    codes = {
        "BadRequest": "400",
        "Unauthorized": "401",
        "PaymentRequired": "402",
        "Forbidden": "403",
        "NotFound": "404",
        "Conflict": "409",
        "PayloadTooLarge": "413",
        "HeadersTooLarge": "431",
        "Unprocessable": "422",
        "RateLimited": "429",
        "BadGateway": "502",
        "Unavailable": "503",
        "GatewayTimeout": "504",
        "UpstreamRejected": "4XX",
    }
    # Every route can meet the body and header limits and the node's rate and concurrency
    # limits (503 `overloaded`).
    wanted = {*names, "PayloadTooLarge", "HeadersTooLarge", "RateLimited", "Unavailable"}
    return {codes[name]: {"$ref": f"#/components/responses/{name}"} for name in sorted(wanted)}


_PAID_HEADERS = {
    "X-Routstr-Cost-Msats": "Cost",
    "X-Routstr-Balance-Msats": "Balance",
    "X-Routstr-Provider": "Provider",
    "X-Cashu": "Change",
    "X-RateLimit-Limit": "RateLimitLimit",
    "X-RateLimit-Remaining": "RateLimitRemaining",
    "X-RateLimit-Reset": "RateLimitReset",
}
_PAID_ERRORS = _errors(
    "BadRequest",
    "Unauthorized",
    "PaymentRequired",
    "Forbidden",
    "NotFound",
    "Conflict",
    "BadGateway",
    "GatewayTimeout",
    "UpstreamRejected",
)
# Each server-sent event (the stream ends with `data: [DONE]` on the OpenAI endpoints).
_SSE = {"text/event-stream": {"schema": _ref("ServerSentEvent")}}


_HELLO_MESSAGES = [{"role": "user", "content": "Hello"}]
EXAMPLES: dict[str, Schema] = {
    "ChatCompletionRequest": {
        "model": "openai/gpt-4o-mini",
        "messages": _HELLO_MESSAGES,
        "max_tokens": 16,
    },
    "CompletionRequest": {"model": "openai/gpt-4o-mini", "prompt": "Hello", "max_tokens": 16},
    "EmbeddingRequest": {"model": "openai/text-embedding-3-small", "input": "Hello"},
    "ImageRequest": {"model": "openai/dall-e-3", "prompt": "A lighthouse", "n": 1},
    "ResponsesRequest": {
        "model": "openai/gpt-4o-mini",
        "input": "Hello",
        "max_output_tokens": 16,
    },
    "MessagesRequest": {
        "model": "anthropic/claude-sonnet-4.5",
        "messages": _HELLO_MESSAGES,
        "max_tokens": 16,
    },
    "CountTokensRequest": {"model": "anthropic/claude-sonnet-4.5", "messages": _HELLO_MESSAGES},
}


def _paid(request: str, response: str, streams: bool, tag: str) -> Schema:
    ok = _json(response, "The answer, with `usage.cost`.", **_PAID_HEADERS)
    if streams:
        ok["content"].update(_SSE)
        ok["description"] += " With `stream: true`: server-sent events, usage and cost last."
    body = _body(request)
    body["content"]["application/json"]["example"] = EXAMPLES[request]
    return {
        "tags": [tag],
        "security": PAYERS,
        "requestBody": body,
        "responses": {"200": ok, **_PAID_ERRORS},
    }


def _audio() -> Schema:
    ok = _json("Transcription", "The transcription, with `usage.cost`.", **_PAID_HEADERS)
    ok["content"]["text/plain"] = {"schema": STR}
    return {
        "tags": ["paid"],
        "security": PAYERS,
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": _ref("AudioRequest"),
                    "encoding": {"file": {"contentType": "application/octet-stream"}},
                }
            },
        },
        "responses": {"200": ok, **_PAID_ERRORS},
    }


def _get(response: str, *errors: str, tag: str, security: Any = None, **extra: Any) -> Schema:
    op: Schema = {"tags": [tag], "responses": {"200": _json(response), **_errors(*errors)}}
    if security is not None:
        op["security"] = security
    return {**op, **extra}


def _post(
    request: str | None, response: str, *errors: str, tag: str, security: Any = None, **x: Any
) -> Schema:
    op = _get(response, *errors, tag=tag, security=security, **x)
    if request is not None:
        op["requestBody"] = _body(request, required=False)
    return op


def _path_param(name: str, description: str) -> list[Schema]:
    return [
        {"name": name, "in": "path", "required": True, "schema": STR, "description": description}
    ]


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_HELLO = {"tags": ["node"], "responses": {"200": _json("Hello")}}
_HELLO_HEAD = {"tags": ["node"], "responses": {"200": {"description": "OK (no body)"}}}
_TOKEN_QUERY = [
    _query("initial_balance_token", STR, "A Cashu token (GET form)."),
    _query("cashu_token", STR, "A Cashu token (GET form)."),
]
_KEY_HEADERS = [
    {
        "name": "Refund-LNURL",
        "in": "header",
        "required": False,
        "schema": STR,
        "description": "A Lightning address or LNURL the balance is paid to at expiry.",
    },
    {
        "name": "Key-Expiry-Time",
        "in": "header",
        "required": False,
        "schema": STR,
        "description": "Unix time at which the key expires (and is refunded).",
    },
]
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": STR,
    "description": "A retry with the same key returns the same payout.",
}
_CREATE = _post(
    "TokenBody",
    "NewKey",
    "BadRequest",
    "Conflict",
    "BadGateway",
    tag="wallet",
    security=[],
    parameters=_TOKEN_QUERY + _KEY_HEADERS,
)
_BALANCE = _get(
    "BalanceInfo", "Unauthorized", "BadRequest", "BadGateway", tag="wallet", security=KEY_HOLDERS
)
_TOPUP = _post(
    "TokenBody",
    "Topup",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "Conflict",
    "BadGateway",
    tag="wallet",
    security=KEY_HOLDERS,
    parameters=_TOKEN_QUERY,
)
_WITHDRAW = _post(
    "WithdrawRequest",
    "Payout",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "BadGateway",
    tag="wallet",
    security=PAYERS,
    parameters=[_query("amount", POS_INT, "Amount in the key's unit."), _IDEMPOTENCY],
)
_HISTORY = _get(
    "History",
    "BadRequest",
    "Unauthorized",
    "BadGateway",
    tag="wallet",
    security=KEY_HOLDERS,
    parameters=[
        _query("limit", INT, "Entries, at most 1000 (default 100)."),
        _query("before", INT, "Entries older than this journal id."),
    ],
)
_CHILD = _post(
    "ChildKeyRequest",
    "ChildKeys",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "BadGateway",
    tag="wallet",
    security=KEY_HOLDERS,
)
_MESSAGES = _paid("MessagesRequest", "Message", True, "paid")
_COUNT_TOKENS = {
    "tags": ["paid"],
    "security": [],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _ref("CountTokensRequest"),
                "example": EXAMPLES["CountTokensRequest"],
            }
        },
    },
    "responses": {
        "200": _json("TokenCount", "Free: the upstream's count, or the node's own."),
        **_errors("BadRequest", "NotFound", "UpstreamRejected"),
    },
}

_PROVIDER_NAME = _path_param("name", "The provider's name ([a-z0-9_-]).")

# (method, canonical path) -> the operation; see ALIASES for the other paths.
OPERATIONS: dict[tuple[str, str], Schema] = {
    ("get", "/"): _HELLO,
    ("head", "/"): _HELLO_HEAD,
    ("post", "/v1/chat/completions"): _paid(
        "ChatCompletionRequest", "ChatCompletion", True, "paid"
    ),
    ("post", "/v1/completions"): _paid("CompletionRequest", "Completion", True, "paid"),
    ("post", "/v1/embeddings"): _paid("EmbeddingRequest", "Embeddings", False, "paid"),
    ("post", "/v1/images/generations"): _paid("ImageRequest", "Images", False, "paid"),
    ("post", "/v1/audio/transcriptions"): _audio(),
    ("post", "/v1/audio/translations"): _audio(),
    ("post", "/v1/responses"): _paid("ResponsesRequest", "Response", True, "paid"),
    ("post", "/v1/messages"): _MESSAGES,
    ("post", "/v1/messages/count_tokens"): _COUNT_TOKENS,
    ("post", "/v1/wallet/create"): _CREATE,
    ("get", "/v1/balance/create"): {**_CREATE, "requestBody": None},
    ("get", "/v1/wallet/balance"): _BALANCE,
    ("post", "/v1/wallet/topup"): _TOPUP,
    ("post", "/v1/wallet/withdraw"): _WITHDRAW,
    ("get", "/v1/wallet/history"): _HISTORY,
    ("post", "/v1/wallet/child-key"): _CHILD,
    ("post", "/lightning/invoice"): _post(
        "InvoiceRequest",
        "Invoice",
        "BadRequest",
        "Unauthorized",
        "BadGateway",
        tag="lightning",
        security=[{}, *KEY_HOLDERS],
    ),
    ("get", "/lightning/invoice/{invoice_id}/status"): _get(
        "InvoiceStatus",
        "NotFound",
        "BadGateway",
        tag="lightning",
        security=[],
        parameters=_path_param("invoice_id", "The id POST /lightning/invoice gave."),
    ),
    ("get", "/v1/models"): _get("ModelList", tag="models", security=[]),
    ("get", "/v1/models/catalog"): _get("Catalog", tag="models", security=[]),
    ("get", "/v1/models/{model_id}"): _get(
        "Model",
        "BadRequest",
        "NotFound",
        tag="models",
        security=[],
        parameters=_path_param("model_id", "A model id or alias; may contain slashes."),
    ),
    ("get", "/v1/providers"): _get("Providers", tag="node", security=[]),
    ("get", "/v1/providers/{name}"): _get(
        "Provider",
        "NotFound",
        tag="node",
        security=[],
        parameters=_path_param("name", "A provider's name from /v1/providers."),
    ),
    ("get", "/v1/info"): _get("NodeInfo", tag="node", security=[]),
    ("get", "/metrics"): {
        "tags": ["node"],
        "security": [{"metricsToken": []}, *ADMIN],
        "responses": {
            "200": {
                "description": "Prometheus text exposition.",
                "content": {"text/plain": {"schema": STR}},
            },
            **_errors("Unauthorized"),
        },
    },
    ("post", "/admin/api/login"): {
        **_post("LoginRequest", "Ok", "BadRequest", "Unauthorized", tag="admin", security=[]),
        "requestBody": _body("LoginRequest"),
    },
    ("post", "/admin/api/logout"): _post(None, "Ok", tag="admin", security=[]),
    ("get", "/admin/api/session"): _get("AdminSession", tag="admin", security=[]),
    ("get", "/admin/api/node"): _get("AdminNode", "Unauthorized", tag="admin", security=ADMIN),
    ("get", "/admin/api/settings"): _get("Settings", "Unauthorized", tag="admin", security=ADMIN),
    ("patch", "/admin/api/settings"): {
        **_post(
            "SettingsPatch",
            "Settings",
            "BadRequest",
            "Unauthorized",
            "Unprocessable",
            tag="admin",
            security=ADMIN,
        ),
        "requestBody": _body("SettingsPatch"),
    },
    ("get", "/admin/api/settings/schema"): _get(
        "SettingsSchema", "Unauthorized", tag="admin", security=ADMIN
    ),
    ("get", "/admin/api/usage"): _get(
        "Usage",
        "BadRequest",
        "Unauthorized",
        tag="admin",
        security=ADMIN,
        parameters=[_query("days", POS_INT, "Days back (default 30).")],
    ),
    ("get", "/admin/api/keys"): _get(
        "AdminKeys",
        "BadRequest",
        "Unauthorized",
        tag="admin",
        security=ADMIN,
        parameters=[
            _query("kind", STR, "'all', or kinds separated by commas (default: not X-Cashu)."),
            _query("limit", POS_INT, "Page size, at most 500 (default 50)."),
            _query("offset", {"type": "integer", "minimum": 0}, "Keys to skip."),
        ],
    ),
    ("patch", "/admin/api/keys/{hash_prefix}"): {
        **_post(
            "KeyRateLimit",
            "AdminKey",
            "BadRequest",
            "Unauthorized",
            "NotFound",
            "Conflict",
            tag="admin",
            security=ADMIN,
            parameters=_path_param("hash_prefix", "The start of the key's sha256 (hex)."),
        ),
        "requestBody": _body("KeyRateLimit"),
    },
    ("post", "/admin/api/keys/{hash_prefix}/disable"): _post(
        None,
        "AdminKey",
        "BadRequest",
        "Unauthorized",
        "NotFound",
        "Conflict",
        tag="admin",
        security=ADMIN,
        parameters=_path_param("hash_prefix", "The start of the key's sha256 (hex)."),
    ),
    ("post", "/admin/api/keys/{hash_prefix}/enable"): _post(
        None,
        "AdminKey",
        "BadRequest",
        "Unauthorized",
        "NotFound",
        "Conflict",
        tag="admin",
        security=ADMIN,
        parameters=_path_param("hash_prefix", "The start of the key's sha256 (hex)."),
    ),
    ("get", "/admin/api/wallet"): _get("AdminWallet", "Unauthorized", tag="admin", security=ADMIN),
    ("post", "/admin/api/withdraw"): {
        **_post(
            "AdminWithdrawRequest",
            "AdminWithdrawal",
            "BadRequest",
            "Unauthorized",
            "Conflict",
            "BadGateway",
            tag="admin",
            security=ADMIN,
            parameters=[_IDEMPOTENCY],
        ),
        "requestBody": _body("AdminWithdrawRequest"),
    },
    ("get", "/admin/api/withdrawals"): _get(
        "AdminWithdrawals", "Unauthorized", tag="admin", security=ADMIN
    ),
    ("get", "/admin/api/providers"): _get(
        "AdminProviders", "Unauthorized", tag="admin", security=ADMIN
    ),
    ("put", "/admin/api/providers/{name}"): {
        **_post(
            "ProviderConfig",
            "AdminProvider",
            "BadRequest",
            "Unauthorized",
            "Unprocessable",
            tag="admin",
            security=ADMIN,
            parameters=_PROVIDER_NAME,
        ),
        "requestBody": _body("ProviderConfig"),
    },
    ("patch", "/admin/api/providers/{name}"): {
        **_post(
            "ProviderConfig",
            "AdminProvider",
            "BadRequest",
            "Unauthorized",
            "NotFound",
            "Unprocessable",
            tag="admin",
            security=ADMIN,
            parameters=_PROVIDER_NAME,
        ),
        "requestBody": _body("ProviderConfig"),
    },
    ("delete", "/admin/api/providers/{name}"): _get(
        "Deleted",
        "Unauthorized",
        "NotFound",
        "Conflict",
        tag="admin",
        security=ADMIN,
        parameters=_PROVIDER_NAME,
    ),
    ("put", "/admin/api/routes"): {
        **_post(
            "Routes",
            "AdminRoutes",
            "BadRequest",
            "Unauthorized",
            "Unprocessable",
            tag="admin",
            security=ADMIN,
        ),
        "requestBody": _body("Routes"),
    },
}

# Other paths to the same handlers (Routstr's names, the seed's, client quirks).
ALIASES: dict[str, str] = {
    "/v1": "/",
    "/api/hello": "/",
    "/v1/api/hello": "/",
    "/v1/v1/messages": "/v1/messages",
    "/v1/v1/messages/count_tokens": "/v1/messages/count_tokens",
    "/v1/balance/create": "/v1/wallet/create",
    "/v1/balance/info": "/v1/wallet/balance",
    "/v1/wallet": "/v1/wallet/balance",
    "/v1/balance/topup": "/v1/wallet/topup",
    "/v1/balance/refund": "/v1/wallet/withdraw",
    "/v1/wallet/refund": "/v1/wallet/withdraw",
    "/v1/balance/history": "/v1/wallet/history",
    "/v1/balance/child-key": "/v1/wallet/child-key",
}

_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def _operation(method: str, path: str, handler: Any) -> Schema:
    found = OPERATIONS.get((method, path))
    if found is None:
        found = OPERATIONS.get((method, ALIASES.get(path, path)))
    if found is None:
        raise LookupError(f"{method.upper()} {path} has no schema in satsrouter/http/openapi.py")
    op = {k: v for k, v in found.items() if v is not None}
    doc = (getattr(handler, "__doc__", None) or "").strip()
    if doc:
        op["summary"] = doc.splitlines()[0].strip()
        op["description"] = doc
    slug = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    op["operationId"] = f"{method}_{slug}"
    return op


def build_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every public route of `app`."""
    paths: dict[str, dict[str, Schema]] = {}
    for route in app.routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        path = _CONVERTER.sub(r"{\1}", route.path)
        for method in sorted(route.methods or ()):
            lower = method.lower()
            paths.setdefault(path, {})[lower] = _operation(lower, path, route.endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "satsrouter",
            "version": __version__,
            "description": "An OpenAI- and Anthropic-compatible LLM node paid in Cashu ecash. "
            "Amounts are integer msat unless a field says otherwise; every error is "
            '`{"error": {"message", "type", "code"}}`; every response has `x-request-id`.',
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "headers": HEADERS,
            "securitySchemes": SECURITY_SCHEMES,
        },
        "tags": [
            {"name": "paid", "description": "Priced per request; reserve, forward, settle."},
            {"name": "wallet", "description": "Keys and balances (seed and Routstr paths)."},
            {"name": "lightning", "description": "Funding keys over Lightning."},
            {"name": "models", "description": "What the node sells, with sats prices."},
            {"name": "node", "description": "Who the node is, its providers, its metrics."},
            {"name": "admin", "description": "The operator's API (admin login)."},
        ],
    }


def install_openapi(app: FastAPI) -> None:
    """Serve `build_document` at the app's `/openapi.json` (built once, on first ask)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
