"""``GET /v1/tokens`` is a page of credentials with ``id`` and ``role``; the last active admin credential
cannot be revoked (a 409 problem), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from controller.db.models import ApiToken
from tests.conftest import Api


def _admins(api: Api, headers: dict[str, str]) -> list[dict[str, object]]:
    page = api.client.get("/v1/tokens", params={"role": "admin", "active": "true"}, headers=headers).json()
    return list(page["items"])


def test_list_is_a_page_with_id_and_role(any_api: Api) -> None:
    for name in ("a", "b", "c"):
        r = any_api.client.post("/v1/tokens", headers=any_api.admin, json={"name": name, "role": "developer"})
        assert r.status_code == 201
    page = any_api.client.get("/v1/tokens", headers=any_api.admin).json()
    assert set(page) == {"items", "total", "limit", "offset"}
    assert page["total"] == 4  # the bootstrap admin + 3
    assert {(t["name"], t["role"]) for t in page["items"]} >= {("a", "developer"), ("c", "developer")}
    assert all(t["id"] and t["role"] and t["active"] for t in page["items"])
    second = any_api.client.get("/v1/tokens", params={"limit": 2, "offset": 2}, headers=any_api.admin).json()
    assert len(second["items"]) == 2 and second["total"] == 4
    first = any_api.client.get("/v1/tokens", params={"limit": 2}, headers=any_api.admin).json()
    assert {t["id"] for t in first["items"]}.isdisjoint({t["id"] for t in second["items"]})
    devs = any_api.client.get("/v1/tokens", params={"role": "developer"}, headers=any_api.admin).json()
    assert devs["total"] == 3 and {t["role"] for t in devs["items"]} == {"developer"}


def test_last_admin_cannot_be_revoked_but_one_of_two_can(any_api: Api) -> None:
    (bootstrap,) = _admins(any_api, any_api.admin)
    r = any_api.client.delete(f"/v1/tokens/{bootstrap['id']}", headers=any_api.admin)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "last active admin" in r.json()["detail"]
    assert any_api.client.get("/v1/datasets", headers=any_api.admin).status_code == 200  # still works

    created = any_api.client.post(
        "/v1/tokens", headers=any_api.admin, json={"name": "ops", "role": "admin"}
    ).json()
    second = {"Authorization": f"Bearer {created['token']}"}
    assert any_api.client.delete(f"/v1/tokens/{bootstrap['id']}", headers=second).status_code == 204
    assert any_api.client.get("/v1/datasets", headers=any_api.admin).status_code == 401
    # now the new one is the last
    r = any_api.client.delete(f"/v1/tokens/{created['id']}", headers=second)
    assert r.status_code == 409
    assert [t["id"] for t in _admins(any_api, second)] == [created["id"]]


def test_an_expired_admin_does_not_count_as_another_admin(api: Api) -> None:
    created = api.client.post("/v1/tokens", headers=api.admin, json={"name": "old", "role": "admin"}).json()
    with api.state.sessions.begin() as s:
        s.execute(
            update(ApiToken)
            .where(ApiToken.id == created["id"])
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    (bootstrap,) = _admins(api, api.admin)
    assert api.client.delete(f"/v1/tokens/{bootstrap['id']}", headers=api.admin).status_code == 409
    inactive = api.client.get("/v1/tokens", params={"active": "false"}, headers=api.admin).json()
    assert [t["id"] for t in inactive["items"]] == [created["id"]]
    assert inactive["items"][0]["active"] is False
    # revoking a non-admin or an already inactive admin is fine
    assert api.client.delete(f"/v1/tokens/{created['id']}", headers=api.admin).status_code == 204
