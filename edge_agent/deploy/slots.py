"""Versioned model slots: ``<state>/models/<model>/<version>/model.onnx`` and JSON pointers
(``current``, ``previous``, ``failed``) each replaced atomically with ``os.replace``.

``current`` carries ``confirmed``: false between activation and a passed health check. An agent that
starts and finds an unconfirmed ``current`` crashed mid-swap and goes back to ``previous``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from edge_agent.deploy.plan import Current, ModelRef
from fedge_common.files import atomic_write, fsync_dir

MODEL_FILE = "model.onnx"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ref(data: dict[str, Any] | None) -> ModelRef | None:
    if not data:
        return None
    return ModelRef(str(data["model_id"]), int(data["version"]), str(data["sha256"]))


class SlotStore:
    """The model slots and pointers of one agent."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "models"
        self.staging = self.root / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- pointers
    def read(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.root / name).read_text())
            return data
        except FileNotFoundError:
            return None

    def write(self, name: str, data: dict[str, Any] | None) -> None:
        """Replace a pointer atomically (temp file, fsync, ``os.replace``, fsync the directory)."""
        target = self.root / name
        if data is None:
            target.unlink(missing_ok=True)
            fsync_dir(self.root)
        else:
            atomic_write(target, json.dumps(data), mode=None)

    def current(self) -> Current:
        return Current(
            active=_ref(self.read("current")),
            previous=_ref(self.read("previous")),
            failed=_ref(self.read("failed")),
            installed=frozenset(self.installed()),
        )

    # ------------------------------------------------------------------- slots
    def path(self, ref: ModelRef) -> Path:
        return self.root / ref.model_id / str(ref.version) / MODEL_FILE

    def installed(self) -> list[ModelRef]:
        refs = []
        for meta in self.root.glob("*/*/slot.json"):
            data = json.loads(meta.read_text())
            if (meta.parent / MODEL_FILE).exists():
                refs.append(ModelRef(data["model_id"], int(data["version"]), data["sha256"]))
        return refs

    def staged_path(self) -> Path:
        return self.staging / f"{uuid.uuid4().hex}.onnx"

    def install(self, ref: ModelRef, staged: Path) -> Path:
        """Move a verified staged file into its slot."""
        slot = self.path(ref).parent
        slot.mkdir(parents=True, exist_ok=True)
        os.replace(staged, slot / MODEL_FILE)
        (slot / "slot.json").write_text(json.dumps(_as_dict(ref)))
        return slot / MODEL_FILE

    def remove(self, ref: ModelRef) -> None:
        shutil.rmtree(self.path(ref).parent, ignore_errors=True)

    # ---------------------------------------------------------------- swapping
    def activate(self, ref: ModelRef, **extra: Any) -> None:
        """``previous`` <- confirmed ``current``; ``current`` <- ref (unconfirmed until healthy)."""
        cur = self.read("current")
        if cur and cur.get("confirmed") and _ref(cur) != ref:
            self.write("previous", {**cur})
        self.write("current", {**_as_dict(ref), **extra, "confirmed": False})

    def confirm(self) -> None:
        """``current`` passed its health check; the last failure no longer blocks anything."""
        cur = self.read("current")
        if cur is not None:
            self.write("current", {**cur, "confirmed": True})
        self.mark_failed(None)

    def mark_failed(self, ref: ModelRef | None) -> None:
        """The one writer of the ``failed`` pointer: the version that last failed here (refused or rolled
        back), which the planner does not retry until the desired state names another; None clears it."""
        self.write("failed", None if ref is None else _as_dict(ref))

    def rollback(self) -> ModelRef | None:
        """Record ``current`` as failed and make ``previous`` current again; None if there is none."""
        cur = self.read("current")
        if cur is not None:
            self.mark_failed(_ref(cur))
        prev = self.read("previous")
        if prev is None:
            self.write("current", None)
            return None
        self.write("current", {**prev, "confirmed": True})
        self.write("previous", None)
        return _ref(prev)

    def recover(self) -> ModelRef | None:
        """At start-up: an unconfirmed ``current`` means a crash mid-swap; roll back. Returns the version
        that was abandoned (to report), else None."""
        cur = self.read("current")
        if cur is None or cur.get("confirmed", True):
            return None
        abandoned = _ref(cur)
        self.rollback()
        return abandoned


def _as_dict(ref: ModelRef) -> dict[str, Any]:
    return {"model_id": ref.model_id, "version": ref.version, "sha256": ref.sha256}
