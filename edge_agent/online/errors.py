"""Why the online learner refused or repaired a message, and the error that carries it.

Every refusal raises :class:`RejectedInput` *before* anything changes (transformer window, model,
buffers): the learner counts it per :class:`Reason`, logs it (rate-limited), and moves on. Repairs are
counted per :class:`Repair` and the repaired message is used.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import StrEnum


class Reason(StrEnum):
    """Why a message was dropped (the keys of a learner's ``rejected`` counters)."""

    MALFORMED_JSON = "malformed_json"
    """Not UTF-8 JSON, or not a JSON object."""
    INVALID_MESSAGE = "invalid_message"
    """A required field is missing or has the wrong type (e.g. a string where a number belongs)."""
    WRONG_FEATURE_COUNT = "wrong_feature_count"
    """A feature vector of another length than the learner's."""
    NON_FINITE = "non_finite"
    """NaN or +-inf in a feature or label (JSON ``NaN``/``Infinity`` are parsed, then refused here)."""
    OUT_OF_ORDER = "out_of_order"
    """A timestamp before the last accepted one."""
    DUPLICATE_TIMESTAMP = "duplicate_timestamp"
    """The same timestamp (time step) as the last accepted message."""
    OUT_OF_RANGE = "out_of_range"
    """A finite value beyond the learner's ``max_abs`` (it would overflow an SGD step)."""
    UNKNOWN_LABEL = "unknown_label"
    """A classification label that is not one of the configured classes."""
    TOO_LARGE = "too_large"
    """A message over the learner's size limit."""
    BURST = "burst"
    """The learner's ingest queue was full: the newest message is dropped (MQTT only)."""
    DIVERGED = "diverged"
    """The update made the model predict a non-finite value: the model was put back as it was."""


class Repair(StrEnum):
    """What the learner repaired (the keys of a learner's ``repaired`` counters)."""

    GAP_FILLED = "gap_filled"
    """Missing time steps (at most ``max_gap``) filled by linear interpolation."""
    GAP_RESET = "gap_reset"
    """A longer gap: the window restarts from this message (no sample spans the gap)."""


class RejectedInput(ValueError):
    """A message the learner does not use; nothing changed."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class LearnerNotReady(RuntimeError):
    """The learner cannot answer yet (no model, no full window)."""


class ExplainerUnavailable(RuntimeError):
    """No explainer for this learner's backend (the message says which and why)."""


class RateLimitedLog:
    """At most one warning per key every ``interval`` seconds; the next says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger, self.interval = logger, interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log ``message`` unless ``key`` was logged within the interval; True when it was logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        suffix = f" ({suppressed} more like it suppressed)" if suppressed else ""
        self.logger.warning(message + suffix, *args)
        return True
