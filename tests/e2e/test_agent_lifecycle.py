"""Agent lifecycle against a live controller: a revoked device stops for good (bounded requests, status,
no inference unless kept, survives a restart); certificates are renewed before expiry with the same key."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.state import ControllerState, build_state
from edge_agent.api import LocalApi
from edge_agent.deploy.agent import Agent, DeployLoop
from edge_agent.identity import CERT_FILE, DeviceIdentity, enroll, make_csr
from edge_agent.lifecycle import PREVIOUS_CERT_FILE, Lifecycle
from edge_agent.link.client import ControllerLink, DeviceAuth
from edge_agent.runtime.session import ModelRuntime
from fedge_protocol import paths
from fedge_protocol.lifecycle import (
    DEVICE_CERTIFICATE_EXPIRED,
    DEVICE_REVOKED,
    DEVICE_STATUS_FIELD,
    DEVICE_STATUS_REVOKED,
    problem_type,
)
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.e2e.helpers import ADMIN, add_model, deploy, enrollment_token, upload_onnx

Live = tuple[LiveServer, ControllerState]
INPUT = {"inputs": {"x": [[1.0, 2.0, 3.0, 4.0]]}}


class Counting(httpx.BaseTransport):
    """Counts the requests that reach the wire."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.count = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class RunningAgent:
    """The agent's deploy loop and local API as ``fedge-agent run`` hosts them (threads, real sockets)."""

    def __init__(self, state_dir: Path, *, keep_serving: bool = False, renew_fraction: float = 0.3) -> None:
        self.transport = Counting()
        self.identity = DeviceIdentity.load(state_dir)
        self.link = ControllerLink(self.identity, transport=self.transport)
        self.lifecycle = Lifecycle(
            state_dir, keep_serving_when_revoked=keep_serving, renew_fraction=renew_fraction
        )
        self.agent = Agent(state_dir, self.link, ModelRuntime(), lifecycle=self.lifecycle)
        self.loop = DeployLoop(self.agent, poll_interval=0.1, max_backoff=0.5)
        self.api = LocalApi(self.agent.runtime, "127.0.0.1", 0, lifecycle=self.lifecycle)

    def __enter__(self) -> RunningAgent:
        self.loop.start()
        self.api.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.api.stop()
        self.loop.stop()
        self.link.close()

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.api.url + path, timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        return body

    def infer(self) -> int:
        request = urllib.request.Request(
            self.api.url + "/v1/infer", data=json.dumps(INPUT).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _serving_device(controller: Live, http: httpx.Client, state_dir: Path) -> str:
    identity = enroll(controller[0].url, enrollment_token(http), state_dir, facts={})
    model_id, version = upload_onnx(http, add_model(2.0))
    deploy(http, model_id, version, [identity.device_id])
    return identity.device_id


@pytest.mark.parametrize("keep_serving", [False, True])
def test_a_revoked_device_stops_polling_reports_it_and_stays_revoked_after_a_restart(
    controller: Live, http: httpx.Client, tmp_path: Path, keep_serving: bool
) -> None:
    state_dir = tmp_path / "agent"
    device_id = _serving_device(controller, http, state_dir)
    with RunningAgent(state_dir, keep_serving=keep_serving) as running:
        _until(lambda: running.agent.runtime.active is not None)
        assert running.infer() == 200
        assert running.get("/v1/status")["state"] == "active"

        assert http.delete(f"/v1/devices/{device_id}", headers=ADMIN).status_code == 204
        _until(lambda: running.lifecycle.revoked)
        sent = running.transport.count
        time.sleep(2.0)  # 20 poll intervals

        assert running.transport.count == sent  # no request after the revocation was seen
        assert running.loop.healthy()  # idle, not crashed
        status = running.get("/v1/status")
        assert status["state"] == DEVICE_STATUS_REVOKED
        assert status["serving"] is keep_serving
        assert running.infer() == (200 if keep_serving else 403)
    marker = json.loads((state_dir / "revoked.json").read_text())
    assert device_id in marker["detail"]

    with RunningAgent(state_dir, keep_serving=keep_serving) as restarted:  # a restart: still revoked
        _until(lambda: restarted.agent.runtime.active is not None)  # the last model is loaded again
        time.sleep(1.0)
        assert restarted.transport.count == 0
        assert restarted.get("/v1/status")["state"] == DEVICE_STATUS_REVOKED
        assert restarted.infer() == (200 if keep_serving else 403)


def test_the_revocation_problem_is_distinct_from_an_expired_token(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    identity = enroll(controller[0].url, enrollment_token(http), tmp_path / "a", facts={})
    url = paths.DESIRED_STATE.format(device_id=identity.device_id)
    stale = identity.sign_jwt(300, now=time.time() - 900)

    expired = http.get(url, headers={"Authorization": f"Bearer {stale}"})
    http.delete(f"/v1/devices/{identity.device_id}", headers=ADMIN)
    revoked = http.get(url, headers={"Authorization": f"Bearer {identity.sign_jwt()}"})

    assert expired.status_code == 401 and expired.json()["type"] != problem_type(DEVICE_REVOKED)
    assert revoked.status_code == 401
    assert revoked.headers["content-type"] == "application/problem+json"
    assert revoked.json()["type"] == problem_type(DEVICE_REVOKED)
    assert revoked.json()[DEVICE_STATUS_FIELD] == DEVICE_STATUS_REVOKED


def test_re_enrolment_clears_the_revocation(controller: Live, http: httpx.Client, tmp_path: Path) -> None:
    state_dir = tmp_path / "agent"
    identity = enroll(controller[0].url, enrollment_token(http), state_dir, facts={})
    http.delete(f"/v1/devices/{identity.device_id}", headers=ADMIN)
    with RunningAgent(state_dir) as running:
        _until(lambda: running.lifecycle.revoked)

    enroll(controller[0].url, enrollment_token(http), state_dir, facts={})

    assert not Lifecycle(state_dir).revoked
    with RunningAgent(state_dir) as running:
        _until(lambda: running.link.not_modified > 0 or running.link.etag is not None)
        assert running.get("/v1/status")["state"] == "active"


def _renew(
    http: httpx.Client, identity: DeviceIdentity, csr: str, device_id: str | None = None
) -> httpx.Response:
    auth = DeviceAuth(identity)
    return http.post(
        paths.CERTIFICATE.format(device_id=device_id or identity.device_id), json={"csr": csr}, auth=auth
    )


def test_renewal_with_a_foreign_key_or_by_a_revoked_or_other_device_is_refused(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    identity = enroll(controller[0].url, enrollment_token(http), tmp_path / "a", facts={})
    other = enroll(controller[0].url, enrollment_token(http), tmp_path / "b", facts={})
    serial = controller[1].fleet.get(identity.device_id).cert_serial

    foreign = _renew(http, identity, make_csr(ec.generate_private_key(ec.SECP256R1())))
    garbage = _renew(http, identity, "-----BEGIN CERTIFICATE REQUEST-----\nnope\n")
    for_other = _renew(http, identity, identity.csr(), device_id=other.device_id)
    as_user = http.post(
        paths.CERTIFICATE.format(device_id=identity.device_id), json={"csr": identity.csr()}, headers=ADMIN
    )

    assert foreign.status_code == 422 and foreign.json()["field"] == "csr", foreign.text
    assert "device's key" in foreign.json()["detail"]
    assert garbage.status_code == 422
    assert for_other.status_code == 403
    assert as_user.status_code == 403
    assert controller[1].fleet.get(identity.device_id).cert_serial == serial  # nothing changed

    own = _renew(http, identity, identity.csr())
    assert own.status_code == 201, own.text
    assert own.json()["serial"] == controller[1].fleet.get(identity.device_id).cert_serial != serial

    http.delete(f"/v1/devices/{identity.device_id}", headers=ADMIN)
    revoked = _renew(http, identity, identity.csr())
    assert revoked.status_code == 401 and revoked.json()["type"] == problem_type(DEVICE_REVOKED)


CERT_SECONDS = 20


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend) -> Iterator[Live]:
    """A controller issuing device certificates that live ``CERT_SECONDS``."""
    settings = ControllerSettings(
        data_dir=tmp_path_factory.mktemp("short-certs"),
        admin_token=ADMIN_TOKEN,
        device_cert_seconds=CERT_SECONDS,
        broker_backend="none",
        _env_file=None,
    )
    state = build_state(settings, shared_evm, start_jobs=False)
    with LiveServer(state) as server:
        yield server, state
    state.close()


@pytest.mark.heavy
def test_the_agent_renews_before_expiry_and_keeps_working_after_the_old_certificate_expired(
    short_lived: Live, tmp_path: Path
) -> None:
    url = short_lived[0].url
    with httpx.Client(base_url=url, timeout=30) as http:
        renewing = enroll(url, enrollment_token(http), tmp_path / "renewing", facts={})
        stale = enroll(url, enrollment_token(http), tmp_path / "stale", facts={})
        first = renewing.certificate
        assert (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds() < 2 * CERT_SECONDS

        with RunningAgent(tmp_path / "renewing", renew_fraction=0.6) as running:
            _until(lambda: running.lifecycle.renewals >= 1)
            renewed = x509.load_pem_x509_certificate((tmp_path / "renewing" / CERT_FILE).read_bytes())
            kept = x509.load_pem_x509_certificate((tmp_path / "renewing" / PREVIOUS_CERT_FILE).read_bytes())
            assert kept == first and renewed.serial_number != first.serial_number
            assert renewed.public_key() == first.public_key()  # same key
            row = short_lived[1].fleet.get(renewing.device_id)
            assert row.cert_serial in {
                format(renewed.serial_number, "x"),
                running.get("/v1/status")["certificate"]["serial"],
            }

            wait = (first.not_valid_after_utc.timestamp() - time.time()) + 1.0
            time.sleep(max(wait, 0.0))  # the first certificate has expired now
            polls = running.link.not_modified
            _until(lambda: running.link.not_modified > polls)  # polling still authenticates
            assert running.lifecycle.renew_error is None

        # the device that did not renew is refused once its certificate expired
        stale_link = ControllerLink(stale)
        try:
            r = stale_link.http.get(paths.DESIRED_STATE.format(device_id=stale.device_id))
        finally:
            stale_link.close()
        assert r.status_code == 401
        assert r.json()["type"] == problem_type(DEVICE_CERTIFICATE_EXPIRED)


def test_the_real_agent_process_stops_for_good_when_revoked(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    """``fedge-agent run`` (deploy loop, local API, MQTT link to the embedded broker, command worker): one
    log line for the revocation, no retries on HTTP or MQTT afterwards, a clean exit on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    from tests.fixtures.services import free_port

    state_dir = tmp_path / "agent"
    identity = enroll(controller[0].url, enrollment_token(http), state_dir, facts={})
    assert identity.broker_url  # the agent connects to the broker too
    port = free_port()
    env = {**os.environ, "FEDGE_AGENT_MQTT_MIN_BACKOFF": "1", "FEDGE_AGENT_MQTT_MAX_BACKOFF": "1"}
    args = ["run", "--state-dir", str(state_dir), "--api-port", str(port), "--poll-interval", "0.2"]
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"

    def status() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(base + "/v1/status", timeout=2) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except OSError:
            return None

    try:
        _until(lambda: (status() or {}).get("state") == "active")
        assert http.delete(f"/v1/devices/{identity.device_id}", headers=ADMIN).status_code == 204
        _until(lambda: (status() or {}).get("state") == DEVICE_STATUS_REVOKED)
        time.sleep(3.0)  # 15 poll intervals, 3 broker reconnect delays
        assert (status() or {}).get("serving") is False
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=15)
    assert agent.returncode == 0, out
    lines = out.splitlines()
    revoked = [i for i, line in enumerate(lines) if "revoked this device" in line]
    assert len(revoked) == 1, out
    after = lines[revoked[0] + 1 :]
    assert not [line for line in after if "unreachable" in line or "broker refused" in line], out
    shown = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "status", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert identity.device_id in json.loads(shown.stdout)["revoked"]["detail"]
