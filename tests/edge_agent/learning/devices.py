"""Test devices for the FL agent tests: a device CA, enrolled state directories (the files enrollment
writes, without a controller), a TLS server certificate the CA signed, local data, fl-join params."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.identity import CA_FILE, CERT_FILE, IDENTITY_FILE, KEY_FILE


@dataclass(frozen=True)
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca() -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedge test device CA"))
        .issuer_name(_name("fedge test device CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return Ca(key, cert)


def enroll(state_dir: Path, ca: Ca) -> str:
    """Write what a successful enrollment leaves in ``state_dir``; returns the device id."""
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    device_id = str(uuid.uuid4())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(device_id))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    (state_dir / KEY_FILE).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(state_dir / KEY_FILE, 0o600)
    (state_dir / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (state_dir / CA_FILE).write_text(ca.pem)
    meta = {
        "device_id": device_id,
        "api_url": "http://127.0.0.1:9",
        "advertised_api_url": "http://127.0.0.1:9",
        "audience": "fedge:device-api",
        "broker_url": None,
    }
    (state_dir / IDENTITY_FILE).write_text(json.dumps(meta))
    return device_id


def device_public_pem(state_dir: Path) -> bytes:
    """The device certificate's public key, PEM SubjectPublicKeyInfo (what RegisterNode takes)."""
    cert = x509.load_pem_x509_certificate((state_dir / CERT_FILE).read_bytes())
    return cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def server_cert(ca: Ca, folder: Path) -> tuple[Path, Path]:
    """A TLS server certificate for 127.0.0.1 signed by ``ca``: (certfile, keyfile)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = folder / "server.pem", folder / "server.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certfile, keyfile


def write_data(path: Path, n: int = 24, classes: int = 10) -> Path:
    """A tiny digits-shaped ``.npz`` (x: [n, 1, 8, 8], y in [0, classes))."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=rng.random((n, 1, 8, 8), dtype=np.float32), y=np.arange(n) % classes)
    return path


def join_params(ca_pem: str, superlink: str = "127.0.0.1:9093", **over: Any) -> dict[str, Any]:
    """``params`` of an fl-join command (fedge_protocol.fl_commands.FlJoin)."""
    params: dict[str, Any] = {
        "job_id": "job-1",
        "superlink": superlink,
        "tls": {"root_certificate": ca_pem},
        "network": "digits-mlp",
        "rounds": 2,
        "local_epochs": 1,
        "round_timeout_s": 600,
        "data": {"dataset": "digits", "input_shape": [None, 1, 8, 8], "num_classes": 10},
        "privacy": {"local_dp": False},
        "leave_after": (_now() + dt.timedelta(hours=1)).isoformat(),
    }
    params.update(over)
    return params
