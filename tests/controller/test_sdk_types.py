"""The SDK returns the typed models its routes declare, and the models live where the SDK can import them.

* every public ``FedgeClient`` method has a return annotation, and none returns plain JSON
  (``dict[str, Any]``, ``list[dict[str, Any]]``, ``Any``) unless its route is schema-less (``SCHEMA_LESS``);
* every request and response model the API declares is defined outside the route modules
  (``controller.schemas``, ``controller.registry.schemas``, ``fedge_protocol``), so the SDK uses the same
  classes; a schema-less route declares no component schema;
* ``controller.client`` (and the ``fedge`` CLI, and the schemas) import without the server's dependencies.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from controller.client import FedgeClient
from controller.schemas.devices import EnrollmentTokenOut
from controller.schemas.health import HealthOut, ReadinessOut
from controller.schemas.jobs import JobOut
from controller.schemas.tokens import TokenCreated, TokenOut, TokenPage
from tests.conftest import ADMIN_TOKEN, LiveServer

ROOT = Path(__file__).resolve().parents[2]

# FedgeClient methods whose route returns arbitrary JSON, so no schema: method -> (HTTP method, route).
SCHEMA_LESS: dict[str, tuple[str, str]] = {
    # the decoded record contract: the seed's shape, which differs between DatasetRecord, ModelRecord
    # and the FedgeRegistry itself
    "contract": ("get", "/v1/contracts/{address}"),
}

# Where API bodies may be defined (importable without FastAPI).
SCHEMA_MODULES = ("controller.schemas.", "controller.registry.schemas", "fedge_protocol")

SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "web3", "alembic")


def _public_methods() -> dict[str, Any]:
    return {
        name: fn
        for name, fn in inspect.getmembers(FedgeClient, inspect.isfunction)
        if not name.startswith("_")
    }


def _plain_json(tp: Any) -> bool:
    """True for ``Any``, ``object``, a dict (of anything), or a list/union holding one of those."""
    if tp is Any or tp is object or tp is dict:
        return True
    origin = typing.get_origin(tp)
    if origin is dict:
        return True
    if origin in (list, tuple, typing.Union, types.UnionType):
        return any(_plain_json(arg) for arg in typing.get_args(tp))
    return False


def test_the_plain_json_check_sees_dicts_lists_of_dicts_and_optionals() -> None:
    assert _plain_json(dict[str, Any]) and _plain_json(list[dict[str, Any]]) and _plain_json(Any)
    assert _plain_json(dict[str, Any] | None) and _plain_json(dict)
    assert not _plain_json(list[BaseModel]) and not _plain_json(str) and not _plain_json(int | None)
    assert not _plain_json(Iterator[str]) and not _plain_json(type(None))


def test_every_public_sdk_method_declares_its_return_type() -> None:
    missing = [name for name, fn in _public_methods().items() if "return" not in typing.get_type_hints(fn)]
    assert missing == []


def test_no_sdk_method_returns_plain_json_for_a_route_with_a_schema() -> None:
    plain = {
        name
        for name, fn in _public_methods().items()
        if name not in SCHEMA_LESS and _plain_json(typing.get_type_hints(fn)["return"])
    }
    assert plain == set(), f"return the route's pydantic model instead of plain JSON: {sorted(plain)}"


def test_the_schema_less_allow_list_names_real_plain_json_methods() -> None:
    methods = _public_methods()
    stale = {
        name
        for name in SCHEMA_LESS
        if name not in methods or not _plain_json(typing.get_type_hints(methods[name])["return"])
    }
    assert stale == set()


def test_the_schema_less_routes_declare_no_schema() -> None:
    from controller.app import create_app

    spec = create_app(None).openapi()  # type: ignore[arg-type]  # the document needs no state
    for name, (method, route) in SCHEMA_LESS.items():
        answer = spec["paths"][route][method]["responses"]["200"]
        schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
        assert "$ref" not in str(schema), (name, schema)


def _models(tp: Any) -> Iterator[type[BaseModel]]:
    """The pydantic classes named by an annotation (through list, dict, unions, Annotated)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        meta = tp.__pydantic_generic_metadata__
        yield meta["origin"] or tp
        for arg in meta["args"]:
            yield from _models(arg)
        return
    for arg in typing.get_args(tp):
        yield from _models(arg)


def _api_routes() -> Iterator[Any]:
    """Every route of the route modules (``controller.api.*.router``)."""
    import importlib
    import pkgutil

    from fastapi.routing import APIRoute

    import controller.api

    for info in pkgutil.iter_modules(controller.api.__path__):
        router = getattr(importlib.import_module(f"controller.api.{info.name}"), "router", None)
        for route in getattr(router, "routes", []):
            if isinstance(route, APIRoute):
                yield route


def test_every_api_body_is_defined_outside_the_route_modules() -> None:
    routes = list(_api_routes())
    assert len(routes) > 30  # the check sees the routes
    misplaced: set[str] = set()
    for route in routes:
        declared = [route.response_model] + [p.field_info.annotation for p in route.dependant.body_params]
        for cls in (m for tp in declared for m in _models(tp)):
            if not cls.__module__.startswith(SCHEMA_MODULES):
                misplaced.add(f"{cls.__module__}.{cls.__qualname__} ({route.path})")
    assert misplaced == set(), "move these into controller/schemas so the SDK can return them"


@pytest.mark.parametrize("module", ["controller.client", "controller.user_cli"])
def test_the_sdk_imports_without_the_server_dependencies(module: str) -> None:
    code = (
        f"import sys, pkgutil, {module}, controller.schemas\n"
        "for info in pkgutil.iter_modules(controller.schemas.__path__):\n"
        "    __import__('controller.schemas.' + info.name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_ONLY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_sdk_models_give_back_the_routes_json_byte_for_byte(live: LiveServer) -> None:
    """What the SDK parses, dumped in JSON mode, is the route's JSON: ``fedge ... --json`` prints what the
    API answered (timestamps, enums, nulls and key order included)."""
    with FedgeClient(live.url, ADMIN_TOKEN) as fc:
        assert isinstance(fc.create_token("sdk-types", "developer", ttl_seconds=3600), TokenCreated)
        assert isinstance(fc.health(), HealthOut) and isinstance(fc.ready(), ReadinessOut)
        assert all(isinstance(t, TokenOut) for t in fc.list_tokens())
        assert isinstance(fc.enrollment_token({"site": "lab"}, 600), EnrollmentTokenOut)
        answers: list[tuple[Any, Any]] = [
            (HealthOut, fc.http.get("/healthz").json()),
            (ReadinessOut, fc.http.get("/readyz").json()),
            (TokenPage, fc.http.get("/v1/tokens").json()),
            (list[JobOut], fc.http.get("/v1/jobs").json()),
            (
                TokenCreated,
                fc.http.post("/v1/tokens", json={"name": "raw", "role": "admin", "ttl_seconds": 60}).json(),
            ),
            (EnrollmentTokenOut, fc.http.post("/v1/enrollment-tokens", json={}).json()),
        ]
    for model, raw in answers:
        adapter: TypeAdapter[Any] = TypeAdapter(model)
        assert json.dumps(adapter.dump_python(adapter.validate_python(raw), mode="json")) == json.dumps(raw)
