"""Grid runs on the device: the grid simulator and a registered RL policy (ONNX), results as telemetry.

A run is a verified command document (:func:`edge_agent.link.signed.verify_command`): it names the
policy's model version with the SHA-256 read from the chain. The agent downloads it through its
authenticated link, refuses it when the bytes hash differently (like a deployment), loads the ONNX with
the settings embedded in it, and plays each requested day. Everything it reports goes through the outbox
(nothing is lost while the links are down), as telemetry records:

* ``{"type": "command", "command_id", "state": "running"}`` when it starts;
* ``{"type": "grid.day", "command_id", "model_id", "version", "day", "before", "after", "gain",
  "shifts": [{"load", "hour", "level", "fraction", "direction", "noop"}...], "shifted", "noops"}`` per day
  (``before``/``after``: SCR, SSR and (SCR+SSR)/2 of the day without and with the proposed shifts);
* ``{"type": "command", "command_id", "state": "succeeded" | "failed", "result" | "error"}`` at the end.

Needs the ``grid`` extra next to ``agent`` (pandapower, SimBench): ``pip install 'fedge[agent,grid]'``.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.deploy.fetch import ArtifactRefused, DigestMismatch, fetch_verified, verify_file
from edge_agent.process import Service, UpdateLock
from fedge_common.files import atomic_write
from fedge_protocol import CommandAck, CommandKind, CommandState, TelemetryType

if TYPE_CHECKING:
    from edge_agent.learning.supernode import SupernodeService

log = logging.getLogger("fedge.agent.grid")

INSTALL_HINT = "pip install 'fedge[agent,grid]'"
SEEN_FILE = "commands-seen.json"
RUNNING_FILE = "command-running"
Record = Callable[[dict[str, Any]], int]


def ack(command_id: str, state: CommandState, **extra: Any) -> dict[str, Any]:
    """A command acknowledgement for the outbox: ``running``, ``succeeded`` + result, ``failed`` + error."""
    return CommandAck(command_id=command_id, state=state, **extra).model_dump(mode="json", exclude_none=True)


class GridRunError(Exception):
    """A grid run that cannot go on: missing extra, refused artifact, bad policy or day."""


def grid_available() -> str | None:
    """None when the grid simulator can run here, else what is missing with the install hint."""
    try:
        import pandapower  # noqa: F401
        import simbench  # noqa: F401

        import simulator.grid.onnx_policy  # noqa: F401
    except ImportError as exc:
        return (
            f"the grid simulator is not installed on this device (no module {exc.name!r}); "
            f"install it with: {INSTALL_HINT}"
        )
    return None


@dataclass(frozen=True)
class DayResult:
    day: int
    before: dict[str, float]
    after: dict[str, float]
    shifts: list[dict[str, Any]]

    @property
    def gain(self) -> float:
        return self.after["score"] / self.before["score"] - 1.0 if self.before["score"] else 0.0


def fetch_policy(link: Any, model: dict[str, Any], state_dir: Path) -> Path:
    """The policy's ONNX under ``state_dir/grid/<model>/<version>/``, downloaded (the verified fetch
    deployments use) unless a copy with the chain's SHA-256 is there; a download that hashes differently
    is deleted and refused."""
    expected = str(model["sha256"])
    folder = state_dir / "grid" / str(model["model_id"]) / str(int(model["version"]))
    path = folder / "policy.onnx"
    if path.is_file():
        try:
            verify_file(path, expected)  # no stream to trust: hash the copy on disk
            return path
        except DigestMismatch:
            pass  # a stale or damaged copy: fetch it again
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fetch_verified(link, str(model["download"]), expected, path)
    except DigestMismatch as exc:
        raise GridRunError(f"{exc}; refused") from exc
    except ArtifactRefused as exc:
        raise GridRunError(str(exc)) from exc
    return path


@functools.cache
def _grid_model() -> Any:
    """The grid (profiles, network): built once per process, shared by every run."""
    from simulator.grid.model import GridModel

    return GridModel()


def _metrics(m: Any) -> dict[str, float]:
    return {"scr": float(m.scr), "ssr": float(m.ssr), "score": float(m.score)}


def play_days(policy_path: Path, days: str, on_day: Callable[[DayResult], None]) -> list[DayResult]:
    """Run the ONNX policy on each day (settings from its embedded description); ``on_day`` per day."""
    missing = grid_available()
    if missing is not None:
        raise GridRunError(missing)
    from simulator.grid.actions import LATER
    from simulator.grid.errors import GridError
    from simulator.grid.onnx_policy import OnnxPolicy
    from simulator.grid.rl import check_compatible, make_env

    try:
        policy = OnnxPolicy(policy_path)
        grid = _grid_model()
        if grid.spec.name != policy.info.grid:
            raise GridRunError(f"the policy was trained on grid {policy.info.grid!r}, not {grid.spec.name!r}")
        try:
            selected = grid.days(days)
        except ValueError as exc:  # not a number / range (DayNotAvailableError is a GridError)
            raise GridRunError(f"bad day selection {days!r}: {exc}") from exc
        env = make_env(grid, policy.info, selected)
        check_compatible(policy.info, env)
        names = [s.name for s in grid.controllable]
        results: list[DayResult] = []
        for day in selected:
            obs, _ = env.reset(options={"day": day})
            policy.reset(env)
            before = _metrics(env.simulation.initial_metrics)
            shifts: list[dict[str, Any]] = []
            done = False
            while not done:
                action = policy.act(obs, env)
                shift = env.codec.decode(action)
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                shifts.append(
                    {
                        "load": names[shift.load],
                        "hour": shift.hour,
                        "level": shift.level,
                        "fraction": shift.fraction,
                        "direction": "later" if shift.direction == LATER else "earlier",
                        "noop": bool(info.get("noop", False)),
                    }
                )
            result = DayResult(day, before, _metrics(env.simulation.metrics()), shifts)
            results.append(result)
            on_day(result)
        return results
    except GridError as exc:
        raise GridRunError(str(exc)) from exc


def run_command(payload: dict[str, Any], link: Any, state_dir: Path, record: Record) -> dict[str, Any] | None:
    """Execute one verified ``grid-run`` command; acknowledgements and results go to ``record`` (the
    outbox). Returns the result summary, or None when the run failed (the failure is recorded)."""
    command_id = str(payload["command_id"])
    model = dict(payload["model"])
    record(ack(command_id, CommandState.RUNNING))
    try:
        if payload.get("kind") != CommandKind.GRID_RUN:
            raise GridRunError(f"this agent does not know command kind {payload.get('kind')!r}")
        missing = grid_available()
        if missing is not None:
            raise GridRunError(missing)
        path = fetch_policy(link, model, state_dir)
        days = str((payload.get("params") or {}).get("days", "test"))

        def report(day: DayResult) -> None:
            effective = [s for s in day.shifts if not s["noop"]]
            record(
                {
                    "type": TelemetryType.GRID_DAY.value,
                    "command_id": command_id,
                    "model_id": model["model_id"],
                    "version": model["version"],
                    "day": day.day,
                    "before": day.before,
                    "after": day.after,
                    "gain": day.gain,
                    "shifts": day.shifts,
                    "shifted": len(effective),
                    "noops": len(day.shifts) - len(effective),
                }
            )

        results = play_days(path, days, report)
        before = sum(r.before["score"] for r in results) / len(results)
        after = sum(r.after["score"] for r in results) / len(results)
        summary = {
            "model_id": model["model_id"],
            "version": model["version"],
            "sha256": model["sha256"],
            "days": len(results),
            "mean_score_before": before,
            "mean_score_after": after,
            "gain": after / before - 1.0 if before else 0.0,
            "mean_scr_after": sum(r.after["scr"] for r in results) / len(results),
            "mean_ssr_after": sum(r.after["ssr"] for r in results) / len(results),
        }
    except GridRunError as exc:
        log.warning("grid run %s failed: %s", command_id, exc)
        record(ack(command_id, CommandState.FAILED, error=str(exc)))
        return None
    except Exception as exc:  # a bug or an unexpected library error: report it, keep the agent alive
        log.exception("grid run %s crashed", command_id)
        record(ack(command_id, CommandState.FAILED, error=f"{type(exc).__name__}: {exc}"))
        return None
    record(ack(command_id, CommandState.SUCCEEDED, result=summary))
    return summary


FL_KINDS = frozenset({CommandKind.FL_JOIN, CommandKind.FL_LEAVE})


class CommandRunner(Service):
    """Runs commands handed to the agent (HTTP poll or MQTT push) one at a time in a worker thread; each
    command id runs once (ids are remembered in the state directory across restarts). A running grid
    run holds the update lock: a deployment that arrives meanwhile waits until it ends. ``fl-join`` and
    ``fl-leave`` go to the SuperNode service ``fl`` (:func:`edge_agent.learning.join.run_fl_command`;
    None: FL is off on this device and joins are refused); they do not hold the update lock (an FL round
    does, through the round lock)."""

    name = "commands"

    def __init__(
        self,
        state_dir: Path,
        link: Any,
        record: Record,
        update_lock: UpdateLock | None = None,
        fl: SupernodeService | None = None,
    ) -> None:
        self.state_dir, self.link, self.record = state_dir, link, record
        self.update_lock = update_lock or UpdateLock()
        self.fl = fl
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._seen = self._load_seen()
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self.idle.set()

    def _load_seen(self) -> list[str]:
        import json

        try:
            raw = json.loads((self.state_dir / SEEN_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [str(x) for x in raw] if isinstance(raw, list) else []

    def submit(self, payload: dict[str, Any]) -> bool:
        """Queue a verified command unless it was seen before; True when queued."""
        import json

        command_id = str(payload["command_id"])
        with self._lock:
            if command_id in self._seen:
                return False
            self._seen = [*self._seen, command_id][-1000:]
            atomic_write(self.state_dir / SEEN_FILE, json.dumps(self._seen).encode())
            self.idle.clear()
        self._queue.put(payload)
        return True

    def fail_interrupted(self) -> str | None:
        """Report a command that was running when the agent stopped (crash, power loss) as failed.

        Its id is already marked seen, so it would otherwise stay ``running`` on the controller forever.
        Returns the command id, or None when nothing was interrupted."""
        marker = self.state_dir / RUNNING_FILE
        try:
            command_id = marker.read_text().strip()
        except FileNotFoundError:
            return None
        if command_id:
            self.record(
                ack(
                    command_id,
                    CommandState.FAILED,
                    error="the agent stopped while this command was running; create the command again",
                )
            )
        marker.unlink(missing_ok=True)
        return command_id or None

    def start(self) -> None:
        self.fail_interrupted()
        self._thread = threading.Thread(target=self._work, daemon=True, name="fedge-agent-commands")
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _work(self) -> None:
        marker = self.state_dir / RUNNING_FILE
        while (payload := self._queue.get()) is not None:
            command_id = str(payload["command_id"])
            try:
                if payload.get("kind") in FL_KINDS:
                    from edge_agent.learning.join import run_fl_command

                    atomic_write(marker, command_id.encode())
                    run_fl_command(payload, self.fl, self.record)
                    marker.unlink(missing_ok=True)
                    continue
                with self.update_lock.hold(f"{payload.get('kind')} {command_id}"):
                    atomic_write(marker, command_id.encode())
                    run_command(payload, self.link, self.state_dir, self.record)
                    marker.unlink(missing_ok=True)
            finally:
                if self._queue.empty():
                    self.idle.set()
