"""``fl-join`` and ``fl-leave`` on the device: check, route to the SuperNode service, acknowledge.

The command worker (:class:`edge_agent.grid.CommandRunner`) hands every verified FL command to
:func:`run_fl_command`. Acknowledgements are telemetry records (``{"type": "command", ...}``) like every
command's:

* ``fl-join`` (params :class:`fedge_protocol.fl_commands.FlJoin`) is checked against what the device
  decides (:func:`check_join`): FL on at all (``FEDGE_AGENT_FL_ENABLED``), the job's dataset is the one the
  device holds (``FEDGE_AGENT_FL_DATASET``, default the data file's stem), the file loads and matches the
  job's input shape, classes and minimum size, the privacy plan fits (local DP unless the device trains
  only with it; the same delta and accountant as the device's; the plan's epsilon within what the device
  has left on that dataset, counting what this job already spent), ``leave_after`` still ahead, and a
  ``tls.server_name`` the SuperNode can verify (Flower verifies the host it connects to). A refusal is
  ``failed`` with the reason. Otherwise the SuperNode service joins (starting or reconfiguring the
  SuperNode) and the command is acknowledged ``running`` with ``fl: {job_id, superlink, connected,
  node_id, dataset, examples, budget_remaining}``; it stays running while the device is in the job.
* The join ends with ``succeeded`` (``result.left`` says why): an ``fl-leave`` for the job, its
  ``leave_after`` passing, a later ``fl-join`` of the same job (joined again) or one that needs another
  SuperLink (replaced). It ends ``failed`` when the SuperNode is given up (it kept crashing) or could
  not join (an unregistered key: the SuperLink refuses it; the error holds the SuperNode's last lines).
* ``fl-leave`` (params :class:`fedge_protocol.fl_commands.FlLeave`) is ``running`` then ``succeeded``
  (``result.was_member``); the SuperNode stops once the device is in no job.

:func:`privacy_report` reads the privacy ledgers (``<state dir>/privacy/*.json``, written by the
ClientApp) for ``fedge-agent privacy``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.learning.supernode import (
    DeviceData,
    Membership,
    SupernodeConfig,
    SupernodeError,
    SupernodeService,
)
from fedge_protocol import CommandAck, CommandKind, CommandState
from fedge_protocol.fl_commands import FlJoin, FlLeave

__all__ = [
    "JoinRefused",
    "check_join",
    "ledger_path",
    "privacy_report",
    "remaining_budget",
    "run_fl_command",
]

log = logging.getLogger("fedge.agent.learning.join")

PRIVACY_DIR = "privacy"
FL_KINDS = frozenset({CommandKind.FL_JOIN, CommandKind.FL_LEAVE})
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
Record = Callable[[dict[str, Any]], int]


class JoinRefused(Exception):
    """The device will not take part in this job (the reason is the command's error)."""


def _ack(command_id: str, state: CommandState, **extra: Any) -> dict[str, Any]:
    return CommandAck(command_id=command_id, state=state, **extra).model_dump(mode="json", exclude_none=True)


def _one_line(exc: BaseException, limit: int = 600) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------ the privacy ledgers (read only)
def ledger_path(state_dir: Path, dataset: str) -> Path:
    """Where the ClientApp keeps a dataset's ledger (its ``_ledger`` naming)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dataset) or "dataset"
    return Path(state_dir) / PRIVACY_DIR / f"{safe}.json"


def _read_ledger(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _summary(raw: dict[str, Any], budget: float | None) -> dict[str, Any]:
    spent = float(raw.get("committed_epsilon", 0.0))
    reserved = float(sum(float(r.get("epsilon_estimate", 0.0)) for r in raw.get("reservations", {}).values()))
    total = float(raw.get("budget_epsilon", 0.0)) if budget is None else float(budget)
    jobs = {
        str(job): {
            "rounds": len(record.get("rounds", [])),
            "epsilon": float(sum(float(r.get("increment", 0.0)) for r in record.get("rounds", []))),
            "noise_multiplier": record.get("noise_multiplier"),
        }
        for job, record in raw.get("jobs", {}).items()
    }
    return {
        "dataset": raw.get("dataset"),
        "budget_epsilon": total,
        "spent_epsilon": spent,
        "reserved_epsilon": reserved,
        "remaining_epsilon": max(total - spent - reserved, 0.0),
        "delta": raw.get("delta"),
        "accountant": raw.get("accountant"),
        "jobs": jobs,
    }


def remaining_budget(state_dir: Path, data: DeviceData, job_id: str | None = None) -> tuple[float, float]:
    """(epsilon the device has left on its dataset under its current budget, epsilon ``job_id`` spent)."""
    raw = _read_ledger(ledger_path(state_dir, data.dataset))
    if raw is None:
        return data.budget_epsilon, 0.0
    summary = _summary(raw, data.budget_epsilon)
    spent_by_job = float(summary["jobs"].get(job_id, {}).get("epsilon", 0.0)) if job_id else 0.0
    return float(summary["remaining_epsilon"]), spent_by_job


def privacy_report(state_dir: Path, data: DeviceData | None) -> list[dict[str, Any]]:
    """One entry per dataset ledger: budget (the device's setting for its configured dataset, else the
    one last saved), spent, reserved, remaining epsilon, and per job its rounds and epsilon."""
    out: list[dict[str, Any]] = []
    configured = ledger_path(state_dir, data.dataset) if data is not None else None
    folder = Path(state_dir) / PRIVACY_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        raw = _read_ledger(path)
        if raw is None or "committed_epsilon" not in raw:
            continue
        mine = path == configured
        entry = _summary(raw, data.budget_epsilon if mine and data is not None else None)
        out.append({**entry, "configured": mine, "file": str(path)})
    if data is not None and not any(e["configured"] for e in out):
        out.append(
            {
                "dataset": data.dataset,
                "budget_epsilon": data.budget_epsilon,
                "spent_epsilon": 0.0,
                "reserved_epsilon": 0.0,
                "remaining_epsilon": data.budget_epsilon,
                "delta": data.delta,
                "accountant": data.accountant,
                "jobs": {},
                "configured": True,
                "file": None,
            }
        )
    return out


# ------------------------------------------------------------------ checks
def _timestamp(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise JoinRefused(f"leave_after {text!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def check_join(
    params: FlJoin, data: DeviceData | None, state_dir: Path, *, now: float
) -> tuple[SupernodeConfig, Membership, dict[str, Any]]:
    """What the SuperNode runs with, the membership, and facts for the ack; :class:`JoinRefused` when
    the device will not take part (see the module)."""
    if data is None:
        raise JoinRefused("this device has no FL training data configured (FEDGE_AGENT_FL_DATA_PATH)")
    match = _ADDRESS.match(params.superlink)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise JoinRefused(f"superlink {params.superlink!r} is not host:port")
    host = match.group(1).strip("[]")
    if params.tls.server_name and params.tls.server_name != host:
        raise JoinRefused(
            f"tls.server_name {params.tls.server_name!r} differs from the SuperLink host {host!r}; "
            "flower-supernode verifies the host it connects to"
        )
    if "BEGIN CERTIFICATE" not in params.tls.root_certificate:
        raise JoinRefused("tls.root_certificate is not a PEM certificate")
    leave_after = _timestamp(params.leave_after)
    if leave_after <= now:
        raise JoinRefused(f"the job's leave_after ({params.leave_after}) has passed")
    if params.data.dataset != data.dataset:
        raise JoinRefused(f"this device holds dataset {data.dataset!r}, not {params.data.dataset!r}")

    from edge_agent.learning.data import DataError, load_local_data

    try:
        local = load_local_data(data.path, num_classes=params.data.num_classes)
    except DataError as exc:
        raise JoinRefused(f"the device's data does not fit the job: {exc}") from exc
    want, have = params.data.input_shape, (None, *local.x.shape[1:])
    if len(want) != len(have) or any(
        w is not None and w != h for w, h in zip(want[1:], have[1:], strict=True)
    ):
        shape = list(have)
        raise JoinRefused(f"the job expects examples of shape {want}, the device's are {shape}")
    if local.num_examples < params.data.min_examples:
        raise JoinRefused(
            f"the job needs at least {params.data.min_examples} examples, the device has {local.num_examples}"
        )

    plan = params.privacy
    remaining, spent_by_job = remaining_budget(state_dir, data, params.job_id)
    if not plan.local_dp:
        if data.require_dp:
            raise JoinRefused(f"this device trains {data.dataset!r} only with local DP; the job plans none")
    else:
        if plan.delta is not None and plan.delta != data.delta:
            raise JoinRefused(f"the job plans delta {plan.delta}; this device accounts at {data.delta}")
        if plan.accountant is not None and plan.accountant != data.accountant:
            raise JoinRefused(
                f"the job plans the {plan.accountant!r} accountant; this device uses {data.accountant!r}"
            )
        if plan.target_epsilon is not None and plan.target_epsilon > remaining + spent_by_job + 1e-9:
            raise JoinRefused(
                f"the job plans epsilon {plan.target_epsilon:g} per device; this device has "
                f"{remaining:.4g} left on {data.dataset!r} (budget {data.budget_epsilon:g})"
            )
    config = SupernodeConfig(
        superlink=params.superlink, root_certificate=params.tls.root_certificate, node_auth=params.node_auth
    )
    member = Membership(
        job_id=params.job_id, command_id="", joined_at=now, leave_after=leave_after, node_id=params.node_id
    )
    facts = {"dataset": data.dataset, "examples": local.num_examples, "budget_remaining": remaining}
    return config, member, facts


# ------------------------------------------------------------------ the commands
def _params(model: type[FlJoin] | type[FlLeave], payload: dict[str, Any]) -> Any:
    try:
        return model.model_validate(payload.get("params") or {})
    except ValidationError as exc:
        raise JoinRefused(f"bad {payload.get('kind')} params: {_one_line(exc)}") from exc


def _join(command_id: str, payload: dict[str, Any], service: SupernodeService | None, record: Record) -> None:
    if service is None:
        raise JoinRefused("this device does not take part in federated learning (FEDGE_AGENT_FL_ENABLED)")
    params: FlJoin = _params(FlJoin, payload)
    config, member, facts = check_join(params, service.data, service.state_dir, now=service.clock())
    outcome = service.join(command_id, config, member)  # acknowledges the earlier joins it ends
    fl = {
        "job_id": params.job_id,
        "superlink": params.superlink,
        "connected": outcome.connected,
        "node_id": outcome.node_id,
        **facts,
    }
    if params.node_id is not None and outcome.node_id is not None and params.node_id != outcome.node_id:
        log.warning("the SuperLink gave node id %s; the command names %s", outcome.node_id, params.node_id)
    record(_ack(command_id, CommandState.RUNNING, fl=fl))


def _leave(
    command_id: str, payload: dict[str, Any], service: SupernodeService | None, record: Record
) -> None:
    params: FlLeave = _params(FlLeave, payload)
    record(_ack(command_id, CommandState.RUNNING))
    member = service.leave(params.job_id, f"fl-leave {command_id}") if service is not None else None
    record(
        _ack(
            command_id,
            CommandState.SUCCEEDED,
            result={"job_id": params.job_id, "was_member": member is not None},
        )
    )


def run_fl_command(payload: dict[str, Any], service: SupernodeService | None, record: Record) -> None:
    """Handle one verified ``fl-join``/``fl-leave`` (see the module); never raises."""
    command_id = str(payload["command_id"])
    kind = payload.get("kind")
    try:
        if kind == CommandKind.FL_JOIN:
            _join(command_id, payload, service, record)
        elif kind == CommandKind.FL_LEAVE:
            _leave(command_id, payload, service, record)
        else:
            raise JoinRefused(f"{kind!r} is not an FL command")
    except (JoinRefused, SupernodeError) as exc:
        log.warning("%s %s refused: %s", kind, command_id, exc)
        record(_ack(command_id, CommandState.FAILED, error=_one_line(exc, 2000)))
    except Exception as exc:  # a bug or an unexpected error: report it, keep the agent alive
        log.exception("%s %s crashed", kind, command_id)
        record(_ack(command_id, CommandState.FAILED, error=f"{type(exc).__name__}: {_one_line(exc)}"))
