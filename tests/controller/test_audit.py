"""The audit log records who did what: every state-changing user call with its principal and outcome, an
anonymous failure too, but not the fleet's own traffic; every response carries an X-Request-ID."""

from __future__ import annotations

from tests.conftest import Api


def _audit(api: Api, **params: str) -> list[dict[str, object]]:
    r = api.client.get("/v1/audit", params=params, headers=api.admin)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_state_changes_are_recorded_with_who_and_outcome(any_api: Api) -> None:
    created = any_api.client.post(
        "/v1/tokens", headers=any_api.admin, json={"name": "ops", "role": "operator"}
    )
    assert created.status_code == 201
    op = {"Authorization": f"Bearer {created.json()['token']}"}
    assert any_api.push_dataset(b"x", headers=op).status_code == 403  # refused: recorded all the same
    assert any_api.client.post("/v1/enrollment-tokens", headers=op, json={"labels": {}}).status_code == 201
    assert (
        any_api.client.delete("/v1/tokens/nope", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    any_api.client.get("/v1/devices", headers=op)  # reads are not audited

    rows = _audit(any_api)
    got = [(r["actor"], r["role"], r["method"], r["path"], r["status"]) for r in rows]
    assert got[:4] == [
        ("anonymous", None, "DELETE", "/v1/tokens/nope", 401),
        ("ops", "operator", "POST", "/v1/enrollment-tokens", 201),
        ("ops", "operator", "POST", "/v1/datasets", 403),
        ("admin", "admin", "POST", "/v1/tokens", 201),
    ]
    assert rows[1]["token_id"] == created.json()["id"] and rows[1]["via"] == "token"
    assert all(r["request_id"] for r in rows)
    assert [r["path"] for r in _audit(any_api, actor="ops")] == ["/v1/enrollment-tokens", "/v1/datasets"]
    assert [r["status"] for r in _audit(any_api, path_prefix="/v1/tokens", method="DELETE")] == [401]


def test_request_ids_are_echoed_or_made(api: Api) -> None:
    mine = api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    made = api.client.get("/healthz", headers={"X-Request-ID": "not ok \x7f"})
    assert made.headers["x-request-id"] != "not ok \x7f" and len(made.headers["x-request-id"]) == 32
    api.client.post(
        "/v1/tokens", headers={**api.admin, "X-Request-ID": "req-7"}, json={"name": "x", "role": "developer"}
    )
    assert _audit(api)[0]["request_id"] == "req-7"


def test_only_admins_read_it(api: Api) -> None:
    assert api.client.get("/v1/audit", headers=api.token("developer")).status_code == 403
