"""A bounded cache of verified device credentials.

An agent signs one ES256 JWT and reuses it for minutes; verifying it (JWT decode, certificate parse, ECDSA
verify) costs far more than the 304 poll it authorises. After one full verification the credential is
remembered here, keyed by its exact text, until the earliest of its ``exp`` and its certificate's
``notAfter`` (never longer than the token lives), least recently used entries evicted beyond ``capacity``.

The cache only skips the *cryptography*: every request still reads the device row (one query, the row the
route uses anyway), so a device revoked here or by another controller replica on the same database is
refused on its very next request, and a renewed certificate (new serial) sends the token through full
verification again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_CAPACITY = 10_000


@dataclass(frozen=True)
class VerifiedCredential:
    device_id: str
    cert_serial: str | None
    """The serial of the certificate the signature was checked with (a renewal sends it through again)."""
    valid_until: float
    """POSIX seconds: min(token exp, certificate notAfter)."""


class CredentialCache:
    """LRU of :class:`VerifiedCredential` by credential text (thread-safe)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, VerifiedCredential] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, credential: str, now: float) -> VerifiedCredential | None:
        """The entry, unless absent or expired at ``now`` (an expired one is dropped)."""
        with self._lock:
            entry = self._entries.get(credential)
            if entry is None:
                return None
            if now >= entry.valid_until:
                del self._entries[credential]
                return None
            self._entries.move_to_end(credential)
            return entry

    def known(self, credential: str) -> bool:
        """Cheap routing hint: the text was verified as a device credential before (not a validity check)."""
        return credential in self._entries

    def put(self, credential: str, entry: VerifiedCredential) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._entries[credential] = entry
            self._entries.move_to_end(credential)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def forget_device(self, device_id: str) -> None:
        """Drop every entry of a device (revocation on this replica; others see the row's status)."""
        with self._lock:
            for key in [k for k, v in self._entries.items() if v.device_id == device_id]:
                del self._entries[key]
