"""The device's privacy ledger: reserve, commit, refuse, persist across instances, write atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge_agent.learning.ledger import BudgetExceeded, LedgerError, PrivacyLedger

STATE = {"history": [[1.2, 0.1, 10]], "mechanism": "prv"}


def _ledger(tmp_path: Path, budget: float = 3.0) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "privacy" / "digits.json", budget_epsilon=budget, delta=1e-5)


def test_a_reserved_round_counts_until_it_is_committed(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)

    ledger.reserve("job-1", 1, 1.0, planned=(1.2, 0.1, 10))
    assert ledger.reserved == pytest.approx(1.0)
    assert ledger.remaining() == pytest.approx(2.0)
    entry = ledger.commit("job-1", 1, epsilon=0.9, accountant_state=STATE, steps=10)

    assert entry["increment"] == pytest.approx(0.9)
    assert (ledger.spent, ledger.reserved, ledger.remaining()) == pytest.approx((0.9, 0.0, 2.1))
    assert ledger.accountant_state == STATE
    assert ledger.orphans() == []


def test_a_round_past_the_budget_is_refused_before_it_runs(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, budget=3.0)
    ledger.reserve("job-1", 1, 2.0)
    ledger.commit("job-1", 1, epsilon=2.0, accountant_state=STATE)
    ledger.reserve("job-2", 1, 0.5)  # another job's open round counts too

    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("job-1", 2, 0.6)

    assert "spent epsilon 2.0000 + reserved 0.5000 + this round 0.6000 > budget 3.0000" in str(refused.value)
    assert [r.job for r in ledger.orphans()] == ["job-2"]  # the refused round left nothing behind
    ledger.reserve("job-1", 2, 0.5)  # exactly the rest still fits


def test_commit_needs_a_reservation_and_a_round_runs_once(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    with pytest.raises(LedgerError, match="was not reserved"):
        ledger.commit("job-1", 1, epsilon=0.1, accountant_state=STATE)
    ledger.reserve("job-1", 1, 0.1)
    with pytest.raises(LedgerError, match="already reserved"):
        ledger.reserve("job-1", 1, 0.1)
    ledger.commit("job-1", 1, epsilon=0.1, accountant_state=STATE)
    with pytest.raises(LedgerError, match="already committed"):
        ledger.reserve("job-1", 1, 0.1)


def test_release_frees_a_round_that_took_no_step(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.reserve("job-1", 1, 2.5)
    ledger.release("job-1", 1)
    assert ledger.remaining() == pytest.approx(3.0)


def test_a_new_instance_continues_the_same_accounting(tmp_path: Path) -> None:
    first = _ledger(tmp_path)
    first.set_noise_plan("job-1", 1.2, {"planned_rounds": 5})
    first.reserve("job-1", 1, 0.7)
    first.commit("job-1", 1, epsilon=0.7, accountant_state=STATE, steps=10)
    first.reserve("job-1", 2, 0.4, planned=(1.2, 0.1, 10))  # "crashes" before committing

    again = _ledger(tmp_path)

    assert again.spent == pytest.approx(0.7)
    assert again.accountant_state == STATE
    assert again.job("job-1")["noise_multiplier"] == 1.2
    assert [(o.job, o.round, o.planned) for o in again.orphans()] == [("job-1", 2, (1.2, 0.1, 10))]
    assert again.remaining() == pytest.approx(3.0 - 0.7 - 0.4)


def test_the_ledger_refuses_another_delta(tmp_path: Path) -> None:
    _ledger(tmp_path).reserve("job-1", 1, 0.1)
    with pytest.raises(LedgerError, match="delta"):
        PrivacyLedger(tmp_path / "privacy" / "digits.json", budget_epsilon=3.0, delta=1e-6)


def test_writes_are_atomic_and_leave_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = _ledger(tmp_path)
    ledger.reserve("job-1", 1, 0.5)
    before = ledger.path.read_bytes()

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ledger.commit("job-1", 1, epsilon=0.5, accountant_state=STATE)

    assert ledger.path.read_bytes() == before  # readers still see the old ledger, whole
    assert json.loads(before)["reservations"]
    assert sorted(p.name for p in ledger.path.parent.iterdir()) == ["digits.json"]
    assert (ledger.path.stat().st_mode & 0o777) == 0o600


def test_lock_rereads_what_another_process_wrote(tmp_path: Path) -> None:
    mine, theirs = _ledger(tmp_path), _ledger(tmp_path)
    theirs.reserve("job-1", 1, 1.0)
    theirs.commit("job-1", 1, epsilon=1.0, accountant_state=STATE)

    with mine.lock() as held:
        assert held.spent == pytest.approx(1.0)
