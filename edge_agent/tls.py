"""The agent pins the controller's TLS CA (docs/tls.md): ``--controller-ca FILE`` /
``FEDGE_AGENT_CONTROLLER_CA`` at ``fedge-agent enroll`` is copied to ``<state_dir>/controller-ca.pem``; every
HTTPS call to the controller (enrollment, desired state, reports, downloads, renewal) then trusts that CA
only. Without one, the system's trust store is used (a controller behind a public certificate)."""

from __future__ import annotations

import ssl
from pathlib import Path

from fedge_common.files import atomic_write
from fedge_common.tls import pinned_context

CONTROLLER_CA_FILE = "controller-ca.pem"


def controller_verify(state_dir: Path, ca_file: Path | None = None) -> ssl.SSLContext | bool:
    """httpx's ``verify=`` for the controller: ``ca_file`` if given, else the CA pinned in the state
    directory, else True (system store). Raises :class:`fedge_common.tls.TlsConfigError` for a bad file."""
    if ca_file is not None:
        return pinned_context(ca_file)
    pinned = state_dir / CONTROLLER_CA_FILE
    return pinned_context(pinned) if pinned.exists() else True


def pin_controller_ca(state_dir: Path, ca_file: Path) -> None:
    """Keep the CA given at enrollment for later runs (checked first)."""
    pinned_context(ca_file)
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(state_dir / CONTROLLER_CA_FILE, ca_file.read_bytes())
