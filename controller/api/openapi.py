"""The OpenAPI document and its viewers, complete and offline.

- ``BEARER``: the one security scheme (``Authorization: Bearer <token>``: an API token, a device-signed JWT or
  an OIDC JWT). Every route that authenticates depends on it through ``deps.get_principal``, so FastAPI marks
  exactly those operations as secured and ``/docs`` shows an Authorize button.
- ``complete_openapi``: hoists ``$defs`` nested in hand-written request bodies into ``components.schemas``
  (so every ``$ref`` resolves), and documents every error response as ``application/problem+json`` with the
  ``Problem`` schema (RFC 7807) instead of FastAPI's ``HTTPValidationError``.
- ``mount_docs``: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from assets bundled in the ``fastapi-offline``
  wheel and served by the controller itself: no CDN, works on an air-gapped network.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles

PROBLEM_MEDIA_TYPE = "application/problem+json"
ASSETS_PATH = "/docs-assets"

BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API token (`fdg_...`), a device-signed JWT, or an OIDC access token.",
)

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 7807 problem details. Validation problems add `field` and `errors`.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "a URI reference naming the problem type (about:blank)"},
        "title": {"type": "string", "description": "short summary of the problem type"},
        "status": {"type": "integer", "description": "the HTTP status code"},
        "detail": {"type": "string", "description": "what went wrong and how to fix it"},
        "instance": {"type": "string", "description": "the request path"},
        "field": {"type": "string", "description": "validation problems: the first invalid field"},
        "errors": {
            "type": "array",
            "description": "validation problems: every invalid field",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}

_ERROR_TEXT = {
    "400": "Bad request (malformed body or parameters)",
    "401": "Missing or invalid credential",
    "403": "The credential's role may not do this",
    "404": "Not found",
    "409": "Conflict with the current state",
    "413": "Body too large",
    "422": "Validation error",
    "503": "A backend (database, storage, chain, broker, engine) is unavailable",
}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _hoist_defs(node: Any, into: dict[str, Any]) -> None:
    """Move every nested ``$defs`` (pydantic schemas built with a components ref template) into
    ``components.schemas``."""
    if isinstance(node, dict):
        defs = node.pop("$defs", None)
        if isinstance(defs, dict):
            for name, schema in defs.items():
                into.setdefault(name, schema)
                _hoist_defs(schema, into)
        for value in list(node.values()):
            _hoist_defs(value, into)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, into)


def complete_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """Make ``doc`` complete: every ``$ref`` resolvable, every error a documented problem."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    hoisted: dict[str, Any] = {}
    _hoist_defs(doc.get("paths", {}), hoisted)
    for name, schema in hoisted.items():
        schemas.setdefault(name, schema)
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, item in doc.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            responses: dict[str, Any] = op.setdefault("responses", {})
            codes = ["400", "422"]
            if op.get("security") or "401" in responses:
                codes += ["401", "403"] if op.get("security") else ["401"]
            if "{" in path or method in ("post", "put", "delete", "patch"):
                codes.append("404")  # the path's resource, or one the body names (a model, a dataset)
            if method in ("post", "put", "delete", "patch"):
                codes.append("409")
            if op.get("requestBody", {}).get("content", {}).get("multipart/form-data"):
                codes.append("413")
            codes.append("503")
            for code in codes:
                existing = responses.get(code)
                description = (existing or {}).get("description") or _ERROR_TEXT[code]
                if code == "422" and description == "Validation Error":
                    description = _ERROR_TEXT["422"]
                responses[code] = _problem_response(description)
            for code, response in responses.items():
                if code[:1] in ("4", "5") and code not in codes:
                    responses[code] = _problem_response(response.get("description") or "Error")
    return doc


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the completed document (built once, cached like FastAPI's)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete_openapi(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def assets_dir() -> Path:
    """The Swagger UI / ReDoc assets shipped by the ``fastapi-offline`` wheel."""
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


def mount_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` from bundled assets (the app must be built with docs_url=redoc_url=None)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=title,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=title,
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
