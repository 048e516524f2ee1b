"""Roles mean what docs/roles.md says, and docs/roles.md is what the routes say."""

from __future__ import annotations

from pathlib import Path

from controller.security.roles import document, route_roles
from tests.conftest import Api

ROOT = Path(__file__).resolve().parents[2]


def test_docs_roles_md_is_generated_from_the_routes(api: Api) -> None:
    expected = document(api.client.app.routes)  # type: ignore[attr-defined]
    assert (ROOT / "docs" / "roles.md").read_text() == expected, (
        "docs/roles.md is stale: run `python -m controller.security.roles > docs/roles.md`"
    )


def test_every_authenticated_route_names_its_roles(api: Api) -> None:
    rows = route_roles(api.client.app.routes)  # type: ignore[attr-defined]
    assert len(rows) >= 40
    public = {(m, p) for _, m, p, roles in rows if roles == ["public"]}
    assert public == {("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/v1/enrollments")}
    for _tag, method, path, roles in rows:
        if path.startswith("/v1/tokens") or path.startswith("/v1/contracts"):
            assert roles == ["admin"], (method, path, roles)


def test_developer_works_the_registry_not_the_fleet(api: Api) -> None:
    dev = api.token("developer")
    assert api.client.get("/v1/models", headers=dev).status_code == 200
    assert api.push_dataset(b"x", headers=dev).status_code == 201
    for method, path in (
        ("GET", "/v1/devices"),
        ("GET", "/v1/deployments"),
        ("POST", "/v1/enrollment-tokens"),
    ):
        r = api.client.request(method, path, headers=dev, json={} if method == "POST" else None)
        assert r.status_code == 403, (method, path, r.text)
        assert "needs one of: admin, operator" in r.json()["detail"]
    r = api.client.post("/v1/deployments", headers=dev, json={"model_id": "m", "selector": {"a": "b"}})
    assert r.status_code == 403  # the whole fleet used to be one developer token away


def test_operator_runs_the_fleet_and_reads_the_registry(api: Api) -> None:
    created = api.client.post("/v1/tokens", headers=api.admin, json={"name": "ops", "role": "operator"})
    assert created.status_code == 201 and created.json()["role"] == "operator"
    op = {"Authorization": f"Bearer {created.json()['token']}"}
    assert api.client.get("/v1/devices", headers=op).status_code == 200
    assert api.client.get("/v1/deployments", headers=op).status_code == 200
    assert api.client.post("/v1/enrollment-tokens", headers=op, json={"labels": {}}).status_code == 201
    assert api.client.get("/v1/models", headers=op).status_code == 200
    assert api.client.get("/v1/datasets", headers=op).status_code == 200
    assert api.push_dataset(b"x", headers=op).status_code == 403  # writing the registry is a developer's
    assert api.client.get("/v1/tokens", headers=op).status_code == 403  # credentials are the admin's
    assert api.client.post("/v1/models/x/translate", headers=op, json={}).status_code == 403
