"""The desired-state documents the controller has built, one per device, so that a poll whose answer is
unchanged costs neither a model lookup nor a signature.

A document is built from the device row's ``desired`` (model id, version, deployment id) and
``desired_revision``, and from the model version it names. Every change of ``desired`` (a deployment, a
wave, a rollback) bumps the revision, a ready model version never changes, and neither does its chain
record; so an entry is used only while the row still has the revision *and* the ``desired`` it was built
from, and is otherwise rebuilt. The cache is bounded (least recently polled devices drop out first).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fedge_protocol.envelope import canonical_json

DOCUMENTS_KEPT = 10_000


def source_key(revision: int, desired: dict[str, Any] | None) -> tuple[int, bytes]:
    """What a document is built from, as the device row has it: (desired_revision, canonical desired)."""
    return revision, canonical_json(desired)


def payload_etag(payload: dict[str, Any]) -> str:
    """The ETag of a desired-state document: a hash of its canonical JSON (the bytes that get signed)."""
    return '"' + hashlib.sha256(canonical_json(payload)).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class DesiredDocument:
    """One device's document at one :func:`source_key`; ``envelope`` once a 200 (or a push) signed it."""

    source: tuple[int, bytes]
    payload: dict[str, Any]
    etag: str
    envelope: dict[str, str] | None = None


@dataclass(frozen=True)
class DesiredPoll:
    """The answer to a poll: the ETag, and the signed envelope unless the caller already holds it (304)."""

    etag: str
    envelope: dict[str, str] | None


class DesiredDocuments:
    """A bounded, thread-safe LRU of the newest :class:`DesiredDocument` per device id."""

    def __init__(self, size: int = DOCUMENTS_KEPT) -> None:
        self.size = size
        self._items: OrderedDict[str, DesiredDocument] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, device_id: str, source: tuple[int, bytes]) -> DesiredDocument | None:
        """The document built from ``source``, or None (never built, dropped, or built from older state)."""
        with self._lock:
            doc = self._items.get(device_id)
            if doc is None or doc.source != source:
                return None
            self._items.move_to_end(device_id)
            return doc

    def put(self, device_id: str, doc: DesiredDocument) -> None:
        with self._lock:
            self._items[device_id] = doc
            self._items.move_to_end(device_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def forget(self, device_id: str) -> None:
        with self._lock:
            self._items.pop(device_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
