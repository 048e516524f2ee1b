"""HTTPS on loopback: ``fedge-controller serve --tls-cert/--tls-key`` (a real process) with a CA made here;
an agent that pins that CA enrolls and polls, one that pins another CA is refused with a clear error; a
bad key pair is one line, exit 1. The same process logs JSON lines (``--log-format json``): the access
line of a request carries its X-Request-ID, a successful desired-state poll has no INFO line."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.identity import EnrollmentError, enroll
from edge_agent.link.client import ControllerLink, LinkError
from edge_agent.tls import CONTROLLER_CA_FILE, controller_verify, pin_controller_ca
from fedge_common.tls import TlsConfigError, check_server_pair, pinned_context
from tests.conftest import ADMIN_TOKEN
from tests.e2e.helpers import ADMIN, enrollment_token
from tests.fixtures.services import free_port, wait_for


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(directory: Path, name: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def make_server_cert(
    directory: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    return cert_path, key_path


@dataclass
class TlsController:
    url: str
    ca: Path
    other_ca: Path
    proc: subprocess.Popen[bytes]
    stderr: Path


def _serve(data_dir: Path, port: int, *args: str, stderr: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FEDGE_DATA_DIR": str(data_dir), "FEDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    cmd = [sys.executable, "-m", "controller.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with stderr.open("wb") as err:
        return subprocess.Popen([*cmd, *args], env=env, stdout=subprocess.DEVNULL, stderr=err)


@pytest.fixture(scope="module")
def tls_controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsController]:
    d = tmp_path_factory.mktemp("tls")
    ca, ca_cert, ca_key = make_ca(d, "fedge-test-ca")
    other_ca, _, _ = make_ca(d, "other-ca")
    cert, key = make_server_cert(d, ca_cert, ca_key)
    port = free_port()
    stderr = d / "controller.log"
    proc = _serve(
        d / "data",
        port,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--log-format",
        "json",
        stderr=stderr,
    )
    url = f"https://127.0.0.1:{port}"
    ctx = pinned_context(ca)

    def up() -> bool:
        assert proc.poll() is None, stderr.read_text()
        try:
            return httpx.get(f"{url}/healthz", verify=ctx, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 60, "controller over HTTPS")
        yield TlsController(url, ca, other_ca, proc, stderr)
    finally:
        proc.terminate()
        proc.wait(15)


def test_an_agent_pinning_the_controllers_ca_enrolls_and_polls(
    tls_controller: TlsController, tmp_path: Path
) -> None:
    c = tls_controller
    with httpx.Client(base_url=c.url, verify=pinned_context(c.ca)) as http:
        token = enrollment_token(http)
        r = http.get("/v1/devices", headers={**ADMIN, "X-Request-ID": "tls-test-request-0001"})
        assert r.status_code == 200, r.text
    state = tmp_path / "agent"
    pin_controller_ca(state, c.ca)  # what `fedge-agent enroll --controller-ca` keeps
    verify = controller_verify(state)
    identity = enroll(c.url, token, state, facts={"cpu_count": 1}, verify=verify)
    assert identity.api_url == c.url and (state / CONTROLLER_CA_FILE).read_bytes() == c.ca.read_bytes()
    link = ControllerLink(identity, verify=controller_verify(state))
    try:
        first = link.poll()
        again = link.poll()
    finally:
        link.close()
    assert first.status == 200 and again.status == 304

    # --log-format json: every line one object; the access line carries the request id; no INFO
    # line for the successful desired-state polls
    lines = [json.loads(line) for line in c.stderr.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    tagged = [line for line in access if line.get("request_id") == "tls-test-request-0001"]
    assert len(tagged) == 1 and "/v1/devices" in tagged[0]["message"], access
    assert not [line for line in access if "desired-state" in line["message"]], access
    assert any("/v1/enrollments" in line["message"] for line in access)


def test_an_agent_pinning_another_ca_is_refused_with_a_clear_error(
    tls_controller: TlsController, tmp_path: Path
) -> None:
    c = tls_controller
    with httpx.Client(base_url=c.url, verify=pinned_context(c.ca)) as http:
        token = enrollment_token(http)
    with pytest.raises(EnrollmentError, match="not signed by the pinned CA"):
        enroll(
            c.url,
            token,
            tmp_path / "a",
            facts={"cpu_count": 1},
            verify=controller_verify(tmp_path, c.other_ca),
        )
    # the token was not spent: the same device enrolls with the right CA, then a link pinned to the
    # other CA is refused before anything is sent
    identity = enroll(c.url, token, tmp_path / "b", facts={"cpu_count": 1}, verify=pinned_context(c.ca))
    link = ControllerLink(identity, verify=pinned_context(c.other_ca))
    try:
        with pytest.raises(LinkError, match="CERTIFICATE_VERIFY_FAILED"):
            link.poll()
    finally:
        link.close()


def test_serve_refuses_a_key_that_is_not_the_certificates_in_one_line(tmp_path: Path) -> None:
    ca, ca_cert, ca_key = make_ca(tmp_path, "ca")
    cert, _ = make_server_cert(tmp_path, ca_cert, ca_key)
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(_pem_key(_key()))
    for cert_file, key_file, expected in (  # the checks serve runs (in-process here)
        (tmp_path / "none.pem", wrong, "does not exist"),
        (ca, ca, "do not load"),
        (cert, wrong, f"--tls-key {wrong} is not the key of --tls-cert {cert}"),
    ):
        with pytest.raises(TlsConfigError, match=re.escape(expected)):
            check_server_pair(cert_file, key_file)
    cmd = [sys.executable, "-m", "controller.cli", "serve", "--port", str(free_port())]
    env = {**os.environ, "FEDGE_DATA_DIR": str(tmp_path / "data"), "FEDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    args = ["--tls-cert", str(cert), "--tls-key", str(wrong)]
    done = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is not the key of" in errors[0], done.stderr
    assert not (tmp_path / "data").exists()  # refused before the controller touched its data


def test_fedge_agent_enroll_with_controller_ca_pins_it_for_later_runs(
    tls_controller: TlsController, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from edge_agent.cli import app

    c = tls_controller
    with httpx.Client(base_url=c.url, verify=pinned_context(c.ca)) as http:
        token = enrollment_token(http)
    runner = CliRunner()
    base = ["enroll", "--controller", c.url, "--token", token]
    refused = runner.invoke(
        app, [*base, "--state-dir", str(tmp_path / "a"), "--controller-ca", str(c.other_ca)]
    )
    assert refused.exit_code == 1
    assert "not signed by the pinned CA" in refused.output
    assert not (tmp_path / "a" / CONTROLLER_CA_FILE).exists()
    done = runner.invoke(
        app, [*base, "--state-dir", str(tmp_path / "b")], env={"FEDGE_AGENT_CONTROLLER_CA": str(c.ca)}
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output.strip().splitlines()[-1])["state_dir"] == str(tmp_path / "b")
    assert (tmp_path / "b" / CONTROLLER_CA_FILE).read_bytes() == c.ca.read_bytes()
    assert controller_verify(tmp_path / "b") is not True  # a pinned context, not the system store
