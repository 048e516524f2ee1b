"""The OpenAPI document is complete (every $ref resolves, a bearer scheme, every error a problem) and its
viewers work offline (no CDN)."""

from __future__ import annotations

import re
from typing import Any

from controller.api.openapi import PROBLEM_MEDIA_TYPE, complete_openapi
from tests.conftest import Api

UNAUTHENTICATED = {("/healthz", "get"), ("/readyz", "get"), ("/v1/enrollments", "post")}


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("get", "put", "post", "delete", "patch")
    ]


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_ref_resolves_and_no_nested_defs(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    refs = _refs(doc)
    assert any(r.endswith("/TrainingSpec") for r in refs)  # the one that used to dangle
    for ref in set(refs):
        _resolve(doc, ref)
    assert "$defs" not in str(doc)


def test_bearer_scheme_declared_and_used_by_every_authenticated_route(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    for path, method, op in _operations(doc):
        if (path, method) in UNAUTHENTICATED:
            assert not op.get("security"), (path, method)
            continue
        assert op.get("security") == [{"bearer": []}], (path, method)
        assert "401" in op["responses"] and "403" in op["responses"], (path, method)
    # and the declared scheme really is the one enforced: no header -> 401 problem with WWW-Authenticate
    resp = api.client.get("/v1/devices")
    assert resp.status_code == 401
    assert resp.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert resp.headers["www-authenticate"] == "Bearer"


def test_every_error_response_is_a_problem(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, method, op in _operations(doc):
        errors = {code: r for code, r in op["responses"].items() if code[:1] in ("4", "5")}
        assert "422" in errors and "400" in errors, (path, method)
        for code, response in errors.items():
            assert list(response["content"]) == [PROBLEM_MEDIA_TYPE], (path, method, code)
            assert response["content"][PROBLEM_MEDIA_TYPE]["schema"] == {"$ref": "#/components/schemas/Problem"}
    # a real validation error has the documented shape
    resp = api.client.get("/v1/models?limit=0", headers=api.admin)
    assert resp.status_code == 422
    body = resp.json()
    assert set(problem["required"]) <= set(body) and body["field"] and body["errors"]


def test_complete_openapi_hoists_nested_defs_and_keeps_existing_descriptions() -> None:
    doc: dict[str, Any] = {
        "paths": {
            "/x/{id}": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "$ref": "#/components/schemas/A",
                                    "$defs": {"A": {"properties": {"b": {"$ref": "#/components/schemas/B"}}}},
                                }
                            }
                        }
                    },
                    "responses": {"404": {"description": "no such x"}, "200": {"description": "ok"}},
                }
            }
        },
        "components": {"schemas": {"B": {"type": "string"}}},
    }
    out = complete_openapi(doc)
    assert set(out["components"]["schemas"]) == {"A", "B", "Problem"}
    responses = out["paths"]["/x/{id}"]["post"]["responses"]
    assert responses["404"]["description"] == "no such x"
    assert {"400", "404", "409", "422", "503"} <= set(responses) and "401" not in responses
    assert responses["200"] == {"description": "ok"}


def test_docs_and_redoc_use_only_bundled_assets(api: Api) -> None:
    for page in ("/docs", "/redoc"):
        resp = api.client.get(page)
        assert resp.status_code == 200
        html = resp.text
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
        assert urls, page
        assert not re.search(r"https?://", html), f"{page} references a remote URL"
        for url in urls:
            assert url.startswith("/"), (page, url)
            asset = api.client.get(url)
            assert asset.status_code == 200, (page, url)
            assert asset.content, (page, url)
    js = api.client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    assert len(js.content) > 100_000
