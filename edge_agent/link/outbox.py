"""A persistent outbox (SQLite in the state directory): state reports and telemetry are appended with
a sequence number, delivered in order, and deleted only once delivered (MQTT PUBACK or HTTP 2xx).

Sequence numbers come from ``AUTOINCREMENT``: they only grow, across restarts and deletions, so the
controller can drop a redelivered entry by comparing with the last sequence it accepted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTBOX_FILE = "outbox.db"


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str  # "state" | "telemetry"
    body: dict[str, Any]
    created: float


class Outbox:
    """Append, then deliver in order with a sender that says whether each entry got through."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
            "body TEXT NOT NULL, created REAL NOT NULL)"
        )

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> Outbox:
        return cls(state_dir / OUTBOX_FILE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, kind: str, body: dict[str, Any]) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (kind, body, created) VALUES (?, ?, ?)",
                (kind, json.dumps(body, sort_keys=True), time.time()),
            )
            return int(cur.lastrowid or 0)

    def pending(self, limit: int = 100) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, body, created FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Entry(int(r[0]), str(r[1]), json.loads(r[2]), float(r[3])) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def ack(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def deliver(self, send: Callable[[Entry], bool]) -> int:
        """Send entries oldest first; stop at the first that does not get through. Returns how many went."""
        sent = 0
        while True:
            batch = self.pending()
            if not batch:
                return sent
            for entry in batch:
                if not send(entry):
                    return sent
                self.ack(entry.seq)
                sent += 1
