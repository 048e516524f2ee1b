"""Mosquitto 2 as the fleet broker: mTLS with certificates from the device CA, identity as username,
per-device ACL patterns, and revocation.

What cuts off a device on Mosquitto 2.0 (verified against Debian's 2.0.11): a new CRL plus ``SIGHUP``
makes new TLS handshakes with the revoked certificate fail ("certificate verify failed"), but leaves an
already connected client connected. So revocation does three things: (1) write the CRL and (2) an ACL
entry ``user <id> / topic deny #`` (read and write are checked on every publish and delivery, so even a
session that survives is muted), then ``SIGHUP`` (reload); (3) the controller takes over the device's
client id (agents connect with client id = device id), which makes Mosquitto close the device's
connection; its reconnects then fail the TLS handshake.

``python -m controller.fleet.broker.mosquitto --data-dir D --port P --out DIR`` renders a ready
configuration (server certificate signed by the device CA, CRL, ACL, mosquitto.conf).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.fleet.broker.base import SERVICE_USER, Broker, BrokerEndpoint, ServiceClientOptions
from controller.fleet.ca import DeviceCA
from fedge_common.files import atomic_write
from fedge_protocol.topics import DEVICE_READ, DEVICE_WRITE, device_acl_pattern

log = logging.getLogger("fedge.broker.mosquitto")


@dataclass(frozen=True)
class MosquittoFiles:
    """Where the broker's files live (the controller rewrites ``crl`` and ``acl`` on revocation)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def service_cert(self) -> Path:
        return self.directory / "service.pem"

    @property
    def service_key(self) -> Path:
        return self.directory / "service.key"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def acl(self) -> Path:
        return self.directory / "acl"

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def pid(self) -> Path:
        return self.directory / "mosquitto.pid"


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """The broker's files are world-readable unless they hold a key (0600)."""
    atomic_write(path, data, mode=mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_service_certificate(
    ca: DeviceCA, common_name: str, *, server_names: list[str] | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and certificate signed by the device CA: the broker's server certificate (with DNS/IP
    SANs) or the controller's client certificate (CN = ``fedge-controller``, never a device UUID)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names is not None:
        sans: list[x509.GeneralName] = []
        for name in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return key, ca.sign_certificate(builder)


def write_crl(ca: DeviceCA, serials: list[int], path: Path) -> None:
    """A CRL of the revoked device certificate serials, signed by the device CA."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=30))
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    _write(path, ca.sign_crl(builder).public_bytes(serialization.Encoding.PEM))


def acl_text(revoked_device_ids: list[str]) -> str:
    """The ACL: the controller reads/writes ``fedge/#``; a device reads its desired/cmd and writes its
    state/telemetry; revoked devices are denied everything."""
    lines = [
        "# written by the fedge controller; reloaded with SIGHUP",
        f"user {SERVICE_USER}",
        "topic readwrite fedge/#",
        "",
    ]
    for device_id in sorted(set(revoked_device_ids)):
        lines += [f"user {device_id}", "topic deny #", ""]
    lines += [f"pattern read {device_acl_pattern(leaf)}" for leaf in DEVICE_READ]
    lines += [f"pattern write {device_acl_pattern(leaf)}" for leaf in DEVICE_WRITE]
    lines.append("")
    return "\n".join(lines)


def render(
    ca: DeviceCA, directory: Path, port: int, host: str = "127.0.0.1", user: str | None = None
) -> MosquittoFiles:
    """Write everything Mosquitto needs to serve the fleet on ``host:port`` (TLS only, client
    certificates required, identity as username, CRL, ACL) and the controller's client credential.
    ``user``: the account Mosquitto runs as when started as root (it must read the CRL and ACL again on
    every reload); default Mosquitto's own choice."""
    files = MosquittoFiles(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write(files.ca, ca.certificate_pem.encode())
    names = sorted({host, "127.0.0.1", "localhost"})
    key, cert = issue_service_certificate(ca, "fedge-broker", server_names=names)
    _write(files.server_key, _key_pem(key), 0o600)
    _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    key, cert = issue_service_certificate(ca, SERVICE_USER)
    _write(files.service_key, _key_pem(key), 0o600)
    _write(files.service_cert, cert.public_bytes(serialization.Encoding.PEM))
    if not files.crl.exists():
        write_crl(ca, [], files.crl)
    if not files.acl.exists():
        _write(files.acl, acl_text([]).encode())
    conf = f"""# fedge fleet broker (rendered by controller.fleet.broker.mosquitto)
{f"user {user}" if user else ""}
per_listener_settings false
# persistence keeps retained desired states and the controller's session (its subscriptions and the
# QoS 1 messages queued for it) across a restart: devices may reconnect before the controller does
persistence true
persistence_location {files.directory}/
# QoS 1 messages queued per client beyond those in flight. The controller's one session takes every
# device's telemetry: the default (1,000) drops, after the device got its PUBACK, whatever arrives while
# the controller is busy or away (1,000 agents at 1 msg/s fill it in a second). 1,000,000 is ~17 min of
# that fleet (~0.4 GB at most).
max_queued_messages 1000000
# QoS 1 messages sent to a client before its PUBACKs (default 20): with 20, a controller that a busy host
# schedules late (a 27 ms round trip) takes at most ~740 msg/s however idle it is
max_inflight_messages 1000
allow_anonymous false
pid_file {files.pid}
acl_file {files.acl}
log_type error
log_type warning
log_type notice

listener {port} {host}
protocol mqtt
cafile {files.ca}
certfile {files.server_cert}
keyfile {files.server_key}
require_certificate true
use_identity_as_username true
crlfile {files.crl}
tls_version tlsv1.2
"""
    _write(files.conf, conf.encode())
    return files


class MosquittoBroker(Broker):
    """An external Mosquitto configured by ``render``; the controller connects with its own client
    certificate (CN ``fedge-controller``) and rewrites the CRL and ACL on revocation."""

    def __init__(
        self,
        ca: DeviceCA,
        files: MosquittoFiles,
        host: str,
        port: int,
        public_url: str | None = None,
        revoked: list[tuple[str, int]] | None = None,
        revoked_source: Callable[[], list[tuple[str, int]]] | None = None,
    ) -> None:
        """``revoked``: (device id, certificate serial) of the devices revoked so far; ``revoked_source``
        reads them again (from the database) at each revocation, so that the CRL and ACL this replica
        writes keep the revocations other replicas made since it started."""
        super().__init__()
        self.ca, self.files, self.host, self.port = ca, files, host, port
        self.public_url = public_url or f"mqtts://{host}:{port}"
        self._revoked: dict[str, int] = dict(revoked or [])
        self._revoked_source = revoked_source
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint(self.public_url, "mtls")

    def _service_options(self) -> ServiceClientOptions:
        if not self.files.service_cert.exists():
            key, cert = issue_service_certificate(self.ca, SERVICE_USER)
            self.files.directory.mkdir(parents=True, exist_ok=True)
            _write(self.files.service_key, _key_pem(key), 0o600)
            _write(self.files.service_cert, cert.public_bytes(serialization.Encoding.PEM))
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.files.ca))
        if not self.files.ca.exists():
            _write(self.files.ca, self.ca.certificate_pem.encode())
        ctx.load_cert_chain(str(self.files.service_cert), str(self.files.service_key))
        return ServiceClientOptions(self.host, self.port, tls=ctx)

    def start(self) -> None:
        if not self.files.ca.exists():
            self.files.directory.mkdir(parents=True, exist_ok=True)
            _write(self.files.ca, self.ca.certificate_pem.encode())
        if self._revoked:
            self._write_revocations()
            self.reload()
        super().start()

    def _write_revocations(self) -> None:
        write_crl(self.ca, list(self._revoked.values()), self.files.crl)
        _write(self.files.acl, acl_text(list(self._revoked)).encode())

    def reload(self) -> bool:
        """SIGHUP the broker (pid from its pid file): it re-reads the ACL and the CRL."""
        try:
            pid = int(self.files.pid.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            log.warning(
                "could not signal mosquitto to reload (%s); revocation applies at its next reload", exc
            )
            return False
        return True

    def revoke_device(self, device_id: str, serial: int | None = None) -> None:
        if serial is None:
            return
        with self._lock:
            if self._revoked_source is not None:
                self._revoked.update(self._revoked_source())
            self._revoked[device_id] = serial
            self._write_revocations()
        self.reload()
        opts = self._service_options()

        def kick() -> None:
            for delay in (0.3, 1.5):  # after the reload took effect, and once more for a racing reconnect
                time.sleep(delay)
                self._kick_by_client_id(device_id, opts)

        threading.Thread(target=kick, daemon=True, name=f"fedge-kick-{device_id[:8]}").start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render a Mosquitto configuration for the fedge fleet.")
    parser.add_argument("--data-dir", type=Path, required=True, help="controller data_dir (holds fleet/)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--out", type=Path, default=None, help="default: <data-dir>/fleet/mosquitto")
    parser.add_argument("--user", default=None, help="account mosquitto runs as when started as root")
    args = parser.parse_args(argv)
    ca = DeviceCA.load_or_create(args.data_dir / "fleet")
    files = render(ca, args.out or args.data_dir / "fleet" / "mosquitto", args.port, args.host, args.user)
    print(files.conf)


if __name__ == "__main__":
    main()
