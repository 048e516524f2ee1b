"""Credentials: 401 for missing/invalid/expired/revoked tokens, 403 for the wrong role, admin bootstrap."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys

from sqlalchemy import select, update

from controller.db.models import ApiToken
from tests.conftest import ADMIN_TOKEN, Api


def test_health_needs_no_credential(api: Api) -> None:
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/readyz").json()["checks"]["database"] == "ok"


def test_missing_token_is_401_with_www_authenticate(api: Api) -> None:
    r = api.client.get("/v1/datasets")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers["content-type"] == "application/problem+json"


def test_invalid_token_is_401(api: Api) -> None:
    r = api.client.get("/v1/datasets", headers={"Authorization": "Bearer fedge_not-a-real-token"})
    assert r.status_code == 401
    assert r.json()["detail"] == "invalid token"


def test_malformed_header_is_401(api: Api) -> None:
    r = api.client.get("/v1/datasets", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_expired_token_is_401(api: Api) -> None:
    headers = api.token("developer", ttl_seconds=60)
    with api.state.sessions.begin() as s:
        s.execute(
            update(ApiToken)
            .where(ApiToken.name == "t-developer")
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    r = api.client.get("/v1/datasets", headers=headers)
    assert r.status_code == 401
    assert r.json()["detail"] == "token has expired"


def test_revoked_token_is_401(api: Api) -> None:
    created = api.client.post(
        "/v1/tokens", headers=api.admin, json={"name": "ci", "role": "developer"}
    ).json()
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert api.client.get("/v1/datasets", headers=headers).status_code == 200
    assert api.client.delete(f"/v1/tokens/{created['id']}", headers=api.admin).status_code == 204
    r = api.client.get("/v1/datasets", headers=headers)
    assert r.status_code == 401
    assert r.json()["detail"] == "token has been revoked"


def test_developer_cannot_mint_tokens(api: Api) -> None:
    r = api.client.post("/v1/tokens", headers=api.token("developer"), json={"name": "x", "role": "admin"})
    assert r.status_code == 403


def test_job_token_cannot_read_registry(api: Api) -> None:
    dataset_id = api.push_dataset(b"x").json()["dataset_id"]
    model_id = api.register_model(dataset_id).json()["model_id"]
    r = api.client.get("/v1/datasets", headers=api.token("job", model_id=model_id))
    assert r.status_code == 403


def test_job_token_needs_a_model(api: Api) -> None:
    r = api.client.post("/v1/tokens", headers=api.admin, json={"name": "j", "role": "job"})
    assert r.status_code == 422
    assert r.json()["field"] == "model_id"


def test_only_token_hashes_are_stored(api: Api) -> None:
    with api.state.sessions() as s:
        rows = s.scalars(select(ApiToken)).all()
    assert [r.token_hash for r in rows] == [hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()]


def test_generated_admin_token_works_and_is_shown_once(make_settings) -> None:  # type: ignore[no-untyped-def]
    from controller.state import build_state

    settings = make_settings(admin_token=None)
    first = build_state(settings)
    assert first.generated_admin_token and first.generated_admin_token.startswith("fedge_")
    first.close()
    second = build_state(settings)
    assert second.generated_admin_token is None
    with second.sessions() as s:
        stored = s.scalars(select(ApiToken.token_hash)).all()
    assert stored == [hashlib.sha256(first.generated_admin_token.encode()).hexdigest()]
    second.close()


def test_admin_token_rotation_cli_revokes_the_old_one(make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from controller.app import create_app
    from controller.state import build_state

    settings = make_settings()
    build_state(settings).close()
    env = {"FEDGE_DATA_DIR": str(settings.data_dir), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "admin-token"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    new = out.stdout.strip().splitlines()[-1]
    assert new.startswith("fedge_") and new != ADMIN_TOKEN
    state = build_state(settings)
    with TestClient(create_app(state)) as client:
        assert (
            client.get("/v1/datasets", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 401
        )
        assert client.get("/v1/datasets", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    state.close()


def test_unknown_route_is_problem_json(api: Api) -> None:
    r = api.client.get("/v1/nothing-here", headers=api.admin)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
