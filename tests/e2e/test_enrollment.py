"""Enrollment with one-time tokens, device certificates, device-signed JWTs and revocation."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import update

from controller.db.models import Device as DeviceRow
from controller.db.models import EnrollmentToken
from controller.state import ControllerState
from edge_agent.identity import EnrollmentError, enroll, make_csr
from tests.conftest import LiveServer
from tests.e2e.helpers import ADMIN, enrolled_device, enrollment_token

Live = tuple[LiveServer, ControllerState]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_enrollment_issues_a_ca_signed_certificate_and_stores_credentials_0600(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    token = enrollment_token(http, {"site": "north"})

    identity = enroll(controller[0].url, token, tmp_path / "agent", {"rack": "3"}, facts={"cpu_count": 2})

    cert = identity.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity.device_id
    cert.verify_directly_issued_by(identity.ca_certificate)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    for name in ("device.key", "device.pem", "ca.pem", "identity.json"):
        assert stat.S_IMODE((tmp_path / "agent" / name).stat().st_mode) == 0o600
    device = http.get(f"/v1/devices/{identity.device_id}", headers=ADMIN).json()
    assert device["labels"] == {"site": "north", "rack": "3"}
    assert device["facts"] == {"cpu_count": 2}


def _enroll_raw(http: httpx.Client, token: str) -> httpx.Response:
    return http.post(
        "/v1/enrollments", json={"token": token, "csr": make_csr(ec.generate_private_key(ec.SECP256R1()))}
    )


def test_replayed_token_is_401(http: httpx.Client) -> None:
    token = enrollment_token(http)
    assert _enroll_raw(http, token).status_code == 201

    again = _enroll_raw(http, token)

    assert again.status_code == 401
    assert again.headers["content-type"] == "application/problem+json"
    assert "already been used" in again.json()["detail"]


def test_expired_token_is_401(controller: Live, http: httpx.Client) -> None:
    token = enrollment_token(http)
    with controller[1].sessions.begin() as s:
        s.execute(
            update(EnrollmentToken).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )

    r = _enroll_raw(http, token)

    assert r.status_code == 401
    assert "expired" in r.json()["detail"]


def test_unknown_token_is_401_and_the_agent_says_why(controller: Live, tmp_path: Path) -> None:
    with pytest.raises(EnrollmentError, match="unknown enrollment token"):
        enroll(controller[0].url, "fedge-enroll-nope", tmp_path / "a", facts={})
    assert not (tmp_path / "a" / "device.key").exists()


def test_only_admins_mint_enrollment_tokens(http: httpx.Client) -> None:
    r = http.post("/v1/enrollment-tokens", json={"labels": {}, "ttl_seconds": 60})
    assert r.status_code == 401


def test_device_jwt_authenticates_and_revocation_cuts_it_off_at_once(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    dev = enrolled_device(controller[0].url, http, tmp_path / "d")
    headers = _bearer(dev.identity.sign_jwt())
    assert http.get(f"/v1/devices/{dev.id}", headers=headers).status_code == 200

    assert http.delete(f"/v1/devices/{dev.id}", headers=ADMIN).status_code == 204
    r = http.get(f"/v1/devices/{dev.id}", headers=headers)

    assert r.status_code == 401
    assert "revoked" in r.json()["detail"]


def test_a_device_cannot_read_another_devices_desired_state_or_admin_routes(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    one = enrolled_device(controller[0].url, http, tmp_path / "one")
    two = enrolled_device(controller[0].url, http, tmp_path / "two")
    headers = _bearer(one.identity.sign_jwt())

    assert http.get(f"/v1/devices/{one.id}/desired-state", headers=headers).status_code == 200
    other = http.get(f"/v1/devices/{two.id}/desired-state", headers=headers)
    assert other.status_code == 403
    assert http.get("/v1/devices", headers=headers).status_code == 403
    assert http.get("/v1/models", headers=headers).status_code == 403


def test_token_signed_by_another_key_or_too_long_lived_is_401(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    import time

    import jwt

    dev = enrolled_device(controller[0].url, http, tmp_path / "d")
    now = int(time.time())
    claims = {"iss": dev.id, "sub": dev.id, "aud": dev.identity.audience, "iat": now, "exp": now + 120}
    forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    r = http.get(f"/v1/devices/{dev.id}", headers=_bearer(forged))
    assert r.status_code == 401
    assert "invalid device token" in r.json()["detail"]
    key = dev.identity._key  # the test uses the key directly to craft a token the agent never makes
    too_long = jwt.encode({**claims, "exp": now + 3600}, key, algorithm="ES256")
    r = http.get(f"/v1/devices/{dev.id}", headers=_bearer(too_long))
    assert r.status_code == 401
    assert "5 minutes" in r.json()["detail"]


def test_admin_lists_devices_with_online_state(controller: Live, http: httpx.Client, tmp_path: Path) -> None:
    dev = enrolled_device(controller[0].url, http, tmp_path / "d")
    dev.link.poll()  # heartbeat

    rows = {d["id"]: d for d in http.get("/v1/devices", headers=ADMIN).json()}

    assert rows[dev.id]["online"] is True
    assert rows[dev.id]["status"] == "active"
    with controller[1].sessions() as s:
        row = s.get(DeviceRow, dev.id)
        assert row is not None and row.last_seen_at is not None
