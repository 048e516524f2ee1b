"""TLS on both sides (see docs/tls.md): the controller's certificate and key for ``fedge-controller serve
--tls-cert/--tls-key`` are checked before uvicorn starts (one clear error instead of a traceback), and the
agent pins the controller's CA: an SSL context that trusts that CA only (not the system store)."""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsConfigError(ValueError):
    """A TLS file is missing, unreadable or does not fit (one line for the user)."""


def _readable(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise TlsConfigError(f"{what} {path} is not readable: {exc.strerror or exc}") from None


def check_server_pair(cert: Path, key: Path) -> None:
    """Raise :class:`TlsConfigError` unless ``cert`` (PEM, may hold the chain) and ``key`` (PEM) load and
    belong together."""
    _readable(cert, "--tls-cert")
    _readable(key, "--tls-key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            raise TlsConfigError(f"--tls-key {key} is not the key of --tls-cert {cert}") from None
        raise TlsConfigError(f"--tls-cert {cert} / --tls-key {key} do not load: {reason}") from None


def pinned_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca_file`` only (hostname checked)."""
    data = _readable(ca_file, "controller CA")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify + hostname check; no system store loaded
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise TlsConfigError(f"controller CA {ca_file} is not a PEM certificate: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def describe(exc: BaseException) -> str:
    """A clear line for a refused TLS handshake (a controller certificate the pinned CA did not sign)."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"the controller's TLS certificate is not signed by the pinned CA ({text})"
    return text
