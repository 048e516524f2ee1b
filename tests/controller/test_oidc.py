"""OIDC bearer JWTs from a real mock issuer (oidc-provider-mock), verified against its JWKS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Api, SettingsFactory, _open


@pytest.fixture
def oidc_api(make_settings: SettingsFactory, oidc_issuer) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    yield from _open(
        make_settings(oidc_issuer=oidc_issuer.issuer, oidc_audience="fedge-api", oidc_role_claim="fedge_role")
    )


def test_developer_jwt_reads_registry(oidc_api: Api, oidc_issuer) -> None:  # type: ignore[no-untyped-def]
    token = oidc_issuer.token("alice", {"fedge_role": "developer"}, audience="fedge-api")
    r = oidc_api.client.get("/v1/datasets", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def test_jwt_role_decides_admin_routes(oidc_api: Api, oidc_issuer) -> None:  # type: ignore[no-untyped-def]
    dev = oidc_issuer.token("bob", {"fedge_role": "developer"}, audience="fedge-api")
    admin = oidc_issuer.token("carol", {"fedge_role": "admin"}, audience="fedge-api")
    body = {"name": "x", "role": "developer"}
    assert (
        oidc_api.client.post("/v1/tokens", headers={"Authorization": f"Bearer {dev}"}, json=body).status_code
        == 403
    )
    r = oidc_api.client.post("/v1/tokens", headers={"Authorization": f"Bearer {admin}"}, json=body)
    assert r.status_code == 201


def test_registration_records_the_jwt_subject(oidc_api: Api, oidc_issuer) -> None:  # type: ignore[no-untyped-def]
    token = oidc_issuer.token("dora", {"fedge_role": "developer"}, audience="fedge-api")
    r = oidc_api.push_dataset(b"abc", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201
    meta = oidc_api.client.get(
        f"/v1/datasets/{r.json()['dataset_id']}/metadata", headers=oidc_api.admin
    ).json()
    assert meta["created_by"] == "dora"


def test_wrong_audience_is_401(oidc_api: Api, oidc_issuer) -> None:  # type: ignore[no-untyped-def]
    token = oidc_issuer.token("eve", {"fedge_role": "admin"}, audience="another-app")
    r = oidc_api.client.get("/v1/datasets", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert "audience" in r.json()["detail"].lower()


def test_missing_role_claim_is_401(oidc_api: Api, oidc_issuer) -> None:  # type: ignore[no-untyped-def]
    token = oidc_issuer.token("frank", {}, audience="fedge-api")
    r = oidc_api.client.get("/v1/datasets", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert "fedge_role" in r.json()["detail"]


def test_tampered_jwt_is_401(oidc_api: Api, oidc_issuer) -> None:  # type: ignore[no-untyped-def]
    token = oidc_issuer.token("gina", {"fedge_role": "developer"}, audience="fedge-api")
    header, payload, sig = token.split(".")
    forged = f"{header}.{payload}.{sig[:-4]}AAAA"
    r = oidc_api.client.get("/v1/datasets", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


def test_device_role_claim_is_refused(oidc_api: Api, oidc_issuer) -> None:  # type: ignore[no-untyped-def]
    token = oidc_issuer.token("hal", {"fedge_role": "device"}, audience="fedge-api")
    r = oidc_api.client.get("/v1/datasets", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
