"""The agent's lifecycle without a controller: the revocation problem stops the link for good (and only
it), the revocation marker survives restarts, renewal answers are checked before the swap."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.fleet.ca import DeviceCA
from edge_agent.identity import CA_FILE, CERT_FILE, IDENTITY_FILE, KEY_FILE, DeviceIdentity, make_csr
from edge_agent.lifecycle import PREVIOUS_CERT_FILE, Lifecycle, RenewalRefused
from edge_agent.link.client import ControllerLink, DeviceRevoked, LinkError
from fedge_protocol.lifecycle import DEVICE_REVOKED, problem_type

DEVICE_ID = "0b6a4f4e-3c2d-4e5f-8a9b-1c2d3e4f5a6b"
Handler = Callable[[httpx.Request], httpx.Response]


def _state_dir(tmp_path: Path, ca: DeviceCA, key: ec.EllipticCurvePrivateKey) -> Path:
    state = tmp_path / "agent"
    state.mkdir()
    pem = serialization.Encoding.PEM
    (state / KEY_FILE).write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (state / CERT_FILE).write_bytes(ca.sign_csr(make_csr(key), DEVICE_ID).public_bytes(pem))
    (state / CA_FILE).write_bytes(ca.certificate.public_bytes(pem))
    meta = {"device_id": DEVICE_ID, "api_url": "http://controller.test", "audience": "fedge-device"}
    (state / IDENTITY_FILE).write_text(json.dumps(meta))
    return state


@pytest.fixture
def ca(tmp_path: Path) -> DeviceCA:
    return DeviceCA.load_or_create(tmp_path / "ca", cert_seconds=100)


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _link(state: Path, handler: Handler) -> tuple[ControllerLink, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return ControllerLink(DeviceIdentity.load(state), transport=httpx.MockTransport(record)), seen


def _problem(status: int, slug: str) -> httpx.Response:
    body = {"type": problem_type(slug), "title": slug, "status": status, "detail": f"the {slug} detail"}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


def test_the_revocation_problem_stops_the_link_for_good(
    tmp_path: Path, ca: DeviceCA, key: ec.EllipticCurvePrivateKey
) -> None:
    link, seen = _link(_state_dir(tmp_path, ca, key), lambda _r: _problem(401, DEVICE_REVOKED))
    told: list[str] = []
    link.on_revoked = told.append

    for _ in range(3):
        with pytest.raises(DeviceRevoked):
            link.poll()
    with pytest.raises(DeviceRevoked):
        link.report({"state": "x"})

    assert len(seen) == 1  # only the first request left the device
    assert told == ["the device-revoked detail"]


@pytest.mark.parametrize("status", [401, 403, 503])
def test_other_refusals_are_ordinary_link_errors(
    tmp_path: Path, ca: DeviceCA, key: ec.EllipticCurvePrivateKey, status: int
) -> None:
    link, seen = _link(_state_dir(tmp_path, ca, key), lambda _r: _problem(status, "unauthorized"))

    for _ in range(2):
        with pytest.raises(LinkError) as info:
            link.poll()
        assert not isinstance(info.value, DeviceRevoked)

    assert link.revoked is None and len(seen) == 2


def test_the_revocation_marker_survives_a_restart_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Lifecycle(tmp_path)
    calls: list[int] = []
    first.on_revoked(lambda: calls.append(1))
    assert first.serving and not first.revoked

    with caplog.at_level(logging.ERROR, "fedge.agent.lifecycle"):
        first.mark_revoked("device x has been revoked")
        first.mark_revoked("device x has been revoked")

    assert len([r for r in caplog.records if "revoked this device" in r.message]) == 1
    assert calls == [1]
    assert not first.serving
    again = Lifecycle(tmp_path)
    assert again.revoked and not again.serving
    assert Lifecycle(tmp_path, keep_serving_when_revoked=True).serving
    assert again.status()["revoked"]["detail"] == "device x has been revoked"


def test_renewal_is_due_below_the_fraction_of_the_lifetime(tmp_path: Path) -> None:
    lifecycle = Lifecycle(tmp_path, renew_fraction=0.3)
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    name = x509.Name([])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=100))
        .sign(key, __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256())
    )

    assert not lifecycle.renewal_due(cert, start + dt.timedelta(days=69))
    assert lifecycle.renewal_due(cert, start + dt.timedelta(days=71))


def _renewal_answer(cert: x509.Certificate) -> httpx.Response:
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    body = {
        "device_id": DEVICE_ID,
        "certificate": pem,
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
    return httpx.Response(201, json=body)


def test_a_renewed_certificate_replaces_the_old_one_which_is_kept(
    tmp_path: Path, ca: DeviceCA, key: ec.EllipticCurvePrivateKey
) -> None:
    state = _state_dir(tmp_path, ca, key)
    old = (state / CERT_FILE).read_bytes()
    ca.cert_seconds = 200  # the renewed one outlives the old one
    csrs: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        csr = json.loads(request.content)["csr"]
        csrs.append(csr)
        return _renewal_answer(ca.sign_csr(csr, DEVICE_ID))

    link, _ = _link(state, answer)
    lifecycle = Lifecycle(state, renew_fraction=0.99)

    assert lifecycle.maybe_renew(link)

    assert (state / PREVIOUS_CERT_FILE).read_bytes() == old
    new = x509.load_pem_x509_certificate((state / CERT_FILE).read_bytes())
    assert new.public_key() == key.public_key()
    assert link.identity.certificate == new
    assert x509.load_pem_x509_csr(csrs[0].encode()).public_key() == key.public_key()
    assert lifecycle.status()["certificate"]["renewals"] == 1


def test_a_renewal_answer_for_another_key_is_refused_and_the_old_certificate_stays(
    tmp_path: Path, ca: DeviceCA, key: ec.EllipticCurvePrivateKey
) -> None:
    state = _state_dir(tmp_path, ca, key)
    old = (state / CERT_FILE).read_bytes()
    ca.cert_seconds = 200
    foreign = make_csr(ec.generate_private_key(ec.SECP256R1()))
    link, seen = _link(state, lambda _r: _renewal_answer(ca.sign_csr(foreign, DEVICE_ID)))
    lifecycle = Lifecycle(state, renew_fraction=0.99, renew_retry_seconds=3600)

    with pytest.raises(RenewalRefused, match="not for this device's key"):
        lifecycle.renew(link)
    assert not lifecycle.maybe_renew(link)
    assert not lifecycle.maybe_renew(link)  # waits for the retry interval

    assert len(seen) == 2
    assert lifecycle.renew_error is not None
    assert (state / CERT_FILE).read_bytes() == old
    assert not (state / PREVIOUS_CERT_FILE).exists()
