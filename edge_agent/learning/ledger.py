"""The device's privacy ledger for one dataset: the device, not the server, decides what it spends.

One JSON file per dataset in the agent's state directory holds the privacy accountant's
``state_dict()`` (every DP-SGD step ever taken on that dataset, all jobs together, so a restarted agent
continues the same accounting), the epsilon committed so far at the ledger's delta, open reservations
and a per-job record (the job's noise multiplier, fixed at its first round, and its rounds).

A round goes ``reserve`` -> train -> ``commit`` (or ``release`` when it took no step), under
:meth:`PrivacyLedger.lock` (an exclusive ``flock`` shared by every process of the device):

* ``reserve(job, round, epsilon_estimate)`` refuses with :class:`BudgetExceeded` when
  ``committed + reserved + epsilon_estimate`` would pass the device's budget; the estimate is the
  increase of the accountant's epsilon the planned steps cause;
* ``commit(job, round, epsilon=..., accountant_state=...)`` records what the accountant reports after
  the round (its epsilon over the whole history) and drops the reservation.

A reservation still open when the lock is next taken belongs to a round that crashed after reserving;
:meth:`PrivacyLedger.orphans` lists them so the caller charges their planned steps in full (a round
that may have trained is never forgotten). Every write is atomic: a temporary file in the same
directory, flushed and fsynced, renamed over the ledger, the directory fsynced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BudgetExceeded", "LedgerError", "PrivacyLedger", "Reservation"]

VERSION = 1
_TOLERANCE = 1e-9


class LedgerError(RuntimeError):
    """The ledger cannot do what was asked (unknown reservation, mismatched delta, corrupt file)."""


class BudgetExceeded(LedgerError):
    """The round would take the device past its privacy budget on this dataset."""

    def __init__(
        self, *, budget: float, spent: float, reserved: float, estimate: float, dataset: str
    ) -> None:
        self.budget, self.spent, self.reserved, self.estimate = budget, spent, reserved, estimate
        super().__init__(
            f"privacy budget of dataset {dataset!r} exceeded: spent epsilon {spent:.4f} + reserved "
            f"{reserved:.4f} + this round {estimate:.4f} > budget {budget:.4f} "
            f"(remaining {max(budget - spent - reserved, 0.0):.4f})"
        )


@dataclass(frozen=True)
class Reservation:
    job: str
    round: int
    epsilon_estimate: float
    planned: tuple[float, float, int] | None  # (noise multiplier, sample rate, steps) the round may take
    at: float


def _key(job: str, server_round: int) -> str:
    return f"{job}#{server_round}"


class PrivacyLedger:
    """Reserve / commit / remaining over one dataset's privacy budget ``(budget_epsilon, delta)``."""

    def __init__(
        self,
        path: str | Path,
        *,
        budget_epsilon: float,
        delta: float = 1e-5,
        accountant: str = "prv",
        dataset: str | None = None,
    ) -> None:
        if not budget_epsilon >= 0 or not math.isfinite(budget_epsilon):
            raise LedgerError(f"the privacy budget must be a finite epsilon >= 0, got {budget_epsilon}")
        if not 0 < delta < 1:
            raise LedgerError(f"delta must be in (0, 1), got {delta}")
        self.path = Path(path)
        self.budget_epsilon = float(budget_epsilon)
        self.delta = float(delta)
        self.accountant = accountant
        self.dataset = dataset or self.path.stem
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._state = self._load()

    # --- persistence ---------------------------------------------------------------------------

    def _fresh(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "dataset": self.dataset,
            "delta": self.delta,
            "accountant": self.accountant,
            "budget_epsilon": self.budget_epsilon,
            "committed_epsilon": 0.0,
            "accountant_state": None,
            "reservations": {},
            "jobs": {},
        }

    def _load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self._fresh()
        try:
            state: dict[str, Any] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"privacy ledger {str(self.path)!r} is corrupt: {exc}") from exc
        if state.get("version") != VERSION:
            raise LedgerError(f"privacy ledger {str(self.path)!r} has unknown version {state.get('version')}")
        if not math.isclose(float(state["delta"]), self.delta, rel_tol=0, abs_tol=1e-15):
            raise LedgerError(
                f"privacy ledger {str(self.path)!r} accounts at delta {state['delta']}, not {self.delta}"
            )
        if state.get("accountant") != self.accountant:
            raise LedgerError(
                f"privacy ledger {str(self.path)!r} uses the {state.get('accountant')!r} accountant, "
                f"not {self.accountant!r}"
            )
        return state

    def _save(self) -> None:
        self._state["budget_epsilon"] = self.budget_epsilon
        data = json.dumps(self._state, indent=1, sort_keys=True).encode("utf-8")
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def lock(self) -> Iterator[PrivacyLedger]:
        """Hold the dataset's ledger exclusively (across processes) and read it afresh."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._state = self._load()
            yield self
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # --- reading ------------------------------------------------------------------------------

    @property
    def spent(self) -> float:
        """Epsilon committed so far (the accountant's, over every committed step)."""
        return float(self._state["committed_epsilon"])

    @property
    def reserved(self) -> float:
        return float(sum(r["epsilon_estimate"] for r in self._state["reservations"].values()))

    def remaining(self) -> float:
        """Budget left after what is committed and what is reserved (never below 0)."""
        return max(self.budget_epsilon - self.spent - self.reserved, 0.0)

    @property
    def accountant_state(self) -> dict[str, Any] | None:
        state = self._state["accountant_state"]
        return None if state is None else dict(state)

    def orphans(self) -> list[Reservation]:
        """Open reservations, i.e. (when the lock is held) rounds that crashed after reserving."""
        return [self._reservation(r) for r in self._state["reservations"].values()]

    def job(self, job: str) -> dict[str, Any]:
        """What the ledger knows of a job: ``noise_multiplier``, ``plan`` and committed ``rounds``."""
        return dict(self._state["jobs"].get(job, {}))

    def _reservation(self, raw: Mapping[str, Any]) -> Reservation:
        planned = raw.get("planned")
        return Reservation(
            job=str(raw["job"]),
            round=int(raw["round"]),
            epsilon_estimate=float(raw["epsilon_estimate"]),
            planned=None if planned is None else (float(planned[0]), float(planned[1]), int(planned[2])),
            at=float(raw["at"]),
        )

    # --- writing ------------------------------------------------------------------------------

    def set_noise_plan(self, job: str, noise_multiplier: float, plan: Mapping[str, Any]) -> None:
        """Fix a job's noise multiplier (chosen at its first round for its whole planned run)."""
        record = self._state["jobs"].setdefault(job, {"rounds": []})
        record["noise_multiplier"] = float(noise_multiplier)
        record["plan"] = dict(plan)
        self._save()

    def reserve(
        self,
        job: str,
        server_round: int,
        epsilon_estimate: float,
        *,
        planned: tuple[float, float, int] | None = None,
    ) -> Reservation:
        """Reserve ``epsilon_estimate`` for a round, or raise :class:`BudgetExceeded`."""
        if not epsilon_estimate >= 0:  # NaN or negative; an infinite estimate is refused below
            raise LedgerError(f"an epsilon estimate must be >= 0, got {epsilon_estimate}")
        key = _key(job, server_round)
        if key in self._state["reservations"]:
            raise LedgerError(f"round {server_round} of job {job!r} is already reserved")
        if any(r["round"] == server_round for r in self._state["jobs"].get(job, {}).get("rounds", [])):
            raise LedgerError(f"round {server_round} of job {job!r} was already committed")
        spent, reserved = self.spent, self.reserved
        if spent + reserved + epsilon_estimate > self.budget_epsilon + _TOLERANCE:
            raise BudgetExceeded(
                budget=self.budget_epsilon,
                spent=spent,
                reserved=reserved,
                estimate=epsilon_estimate,
                dataset=self.dataset,
            )
        raw = {
            "job": job,
            "round": int(server_round),
            "epsilon_estimate": float(epsilon_estimate),
            "planned": None if planned is None else [float(planned[0]), float(planned[1]), int(planned[2])],
            "at": time.time(),
        }
        self._state["reservations"][key] = raw
        self._save()
        return self._reservation(raw)

    def commit(
        self,
        job: str,
        server_round: int,
        *,
        epsilon: float,
        accountant_state: Mapping[str, Any],
        steps: int | None = None,
        orphaned: bool = False,
    ) -> dict[str, Any]:
        """Record the accountant's epsilon (over its whole history) and state after a reserved round."""
        key = _key(job, server_round)
        if key not in self._state["reservations"]:
            raise LedgerError(f"round {server_round} of job {job!r} was not reserved")
        if not math.isfinite(epsilon) or epsilon < self.spent - 1e-6:
            raise LedgerError(f"the accountant reports epsilon {epsilon}, below the committed {self.spent}")
        entry = {
            "round": int(server_round),
            "epsilon_after": float(epsilon),
            "increment": float(max(epsilon - self.spent, 0.0)),
            "estimate": float(self._state["reservations"][key]["epsilon_estimate"]),
            "steps": steps,
            "orphaned": orphaned,
            "at": time.time(),
        }
        del self._state["reservations"][key]
        self._state["committed_epsilon"] = float(max(epsilon, self.spent))
        self._state["accountant_state"] = json.loads(json.dumps(dict(accountant_state)))
        self._state["jobs"].setdefault(job, {"rounds": []}).setdefault("rounds", []).append(entry)
        self._save()
        return entry

    def release(self, job: str, server_round: int) -> None:
        """Drop the reservation of a round that took no training step."""
        if self._state["reservations"].pop(_key(job, server_round), None) is None:
            raise LedgerError(f"round {server_round} of job {job!r} was not reserved")
        self._save()
