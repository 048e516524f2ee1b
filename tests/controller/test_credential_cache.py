"""Verified device credentials are cached (a reused token skips the JWT/certificate cryptography), bounded
(LRU, never past the token's exp) and revocation-aware: a device revoked through this controller or
directly in the shared database (another replica) is refused on its very next request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from controller.db.models import Device as DeviceRow
from controller.db.models import utcnow
from controller.fleet import devices as fleet_devices
from controller.fleet.credentials import CredentialCache, VerifiedCredential
from edge_agent.identity import DeviceIdentity, enroll
from fedge_protocol.lifecycle import DEVICE_REVOKED, problem_type
from tests.conftest import LiveServer
from tests.e2e.helpers import ADMIN, enrollment_token


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        yield client


@pytest.fixture
def device(live: LiveServer, http: httpx.Client, tmp_path: Path) -> DeviceIdentity:
    return enroll(live.url, enrollment_token(http, {}), tmp_path / "d", facts={"cpu_count": 1})


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Certificates parsed to verify a device token (the expensive path)."""
    seen: list[str] = []
    real = fleet_devices.x509.load_pem_x509_certificate

    def counting(data: bytes, *args: Any) -> Any:
        seen.append("verify")
        return real(data, *args)

    monkeypatch.setattr(fleet_devices, "x509", SimpleNamespace(load_pem_x509_certificate=counting))
    return seen


def _poll(http: httpx.Client, dev: DeviceIdentity, token: str) -> httpx.Response:
    return http.get(
        f"/v1/devices/{dev.device_id}/desired-state", headers={"Authorization": f"Bearer {token}"}
    )


def test_a_reused_token_is_verified_once(
    http: httpx.Client, device: DeviceIdentity, verifications: list[str]
) -> None:
    token = device.sign_jwt(300)
    for _ in range(5):
        assert _poll(http, device, token).status_code == 200
    assert verifications == ["verify"]
    assert _poll(http, device, device.sign_jwt(299)).status_code == 200  # a new token: verified
    assert len(verifications) == 2


def test_a_tampered_token_is_not_served_from_the_cache(http: httpx.Client, device: DeviceIdentity) -> None:
    token = device.sign_jwt(300)
    assert _poll(http, device, token).status_code == 200
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    assert _poll(http, device, forged).status_code == 401


def test_revoked_through_the_api_is_refused_on_the_next_request(
    http: httpx.Client, device: DeviceIdentity, live: LiveServer
) -> None:
    token = device.sign_jwt(300)
    assert _poll(http, device, token).status_code == 200
    assert http.delete(f"/v1/devices/{device.device_id}", headers=ADMIN).status_code == 204
    r = _poll(http, device, token)
    assert r.status_code == 401 and r.json()["type"] == problem_type(DEVICE_REVOKED)
    assert not live.state.fleet.credentials.known(token)


def test_revoked_by_another_replica_is_refused_on_the_next_request(
    http: httpx.Client, device: DeviceIdentity, live: LiveServer
) -> None:
    """Another controller on the same database revokes the device: this one's cache is not told, the row
    it reads on every request is."""
    token = device.sign_jwt(300)
    assert _poll(http, device, token).status_code == 200
    assert live.state.fleet.credentials.known(token)
    with live.state.sessions.begin() as s:
        s.execute(
            update(DeviceRow)
            .where(DeviceRow.id == device.device_id)
            .values(status="revoked", revoked_at=utcnow())
        )
    r = _poll(http, device, token)
    assert r.status_code == 401 and r.json()["type"] == problem_type(DEVICE_REVOKED)


def test_a_renewed_certificate_sends_the_token_through_verification_again(
    http: httpx.Client, device: DeviceIdentity, live: LiveServer, verifications: list[str]
) -> None:
    token = device.sign_jwt(300)
    assert _poll(http, device, token).status_code == 200
    with live.state.sessions.begin() as s:
        s.execute(update(DeviceRow).where(DeviceRow.id == device.device_id).values(cert_serial="ab12"))
    assert _poll(http, device, token).status_code == 200  # same key, same cert PEM: still valid
    assert verifications == ["verify", "verify"]


def test_entries_expire_with_the_token_and_the_cache_is_bounded() -> None:
    cache = CredentialCache(capacity=2)
    cache.put("a", VerifiedCredential("d1", "1", valid_until=100.0))
    assert cache.get("a", 99.0) is not None
    assert cache.get("a", 100.0) is None and len(cache) == 0  # at exp: gone
    for key in ("a", "b", "c"):
        cache.put(key, VerifiedCredential("d1", "1", valid_until=100.0))
    assert len(cache) == 2 and cache.get("a", 0.0) is None  # least recently used evicted
    cache.put("x", VerifiedCredential("d2", "1", valid_until=100.0))
    cache.forget_device("d1")
    assert len(cache) == 1 and cache.get("x", 0.0) is not None
