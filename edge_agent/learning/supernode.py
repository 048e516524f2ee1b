"""``flower-supernode`` as a supervised child process of the agent (a :class:`~edge_agent.process.Service`).

Flower's SuperNode loop blocks and may end its own process (``flwr_exit``), so it never runs in the
agent's process: :class:`SupernodeService` starts it as a child in its own session (process group) with

* ``--superlink HOST:PORT`` from the ``fl-join`` command (the controller's Fleet-only TLS front);
* ``--root-certificates fl/superlink-ca.pem``: the command's ``tls.root_certificate`` (the command is
  signed by the device CA pinned at enrollment, so this adds no trust);
* ``--auth-supernode-private-key fl/supernode-key``: the device's enrolled EC P-256 key exported in
  OpenSSH format (0600; removed when the SuperNode stops), unless the job says ``node_auth: false``;
* ``--host 127.0.0.1 --port <free port>``: its Runtime API, which its ``flwr-clientapp`` processes call;
* ``--node-config fl/node-config.toml``: the ClientApp's keys (the device's data file, the state
  directory holding the privacy ledgers, the dataset name, the device's budget, delta, accountant and
  whether it trains only with local DP; see ``edge_agent/learning/clientapp.py``);
* ``FLWR_HOME=fl/flwr-home`` with its own ``config.toml`` (no connections), telemetry and update checks
  off, ``PATH`` led by this interpreter's ``bin`` (``flower-superexec``/``flwr-clientapp`` of the same
  install), and nothing installed at run time (no ``--allow-runtime-dependency-installation``).

Its output goes to ``fl/supernode.log``. It runs while the device is in at least one job (memberships in
``fl/joins.json``, so a restarted agent rejoins). A SuperNode that exits by itself is restarted by the
agent process (``healthy()`` turns False once the backoff passed: 5 s, doubling per crash, at most
120 s, which also outlasts the SuperLink's 60 s heartbeat patience: a node killed without deactivating
stays "online" there that long and cannot be activated again before); after ``policy.limit`` (6) crashes
within ``policy.window`` (900 s) the service gives up: every joined job's
``fl-join`` is acknowledged ``failed`` with the SuperNode's last words, the memberships are dropped and
the agent goes on without FL (its other services are not taken down). Stopping terminates the whole
process group (SIGTERM, then SIGKILL after ``grace`` seconds) and any process still naming its Runtime
port (``flower-superexec`` and ``flwr-clientapp`` children), then waits until none is left.

``fl/supernode.json`` tells ``fedge-agent status`` what runs. The service also serves the round lock
(:mod:`edge_agent.learning.roundlock`), so an FL round holds the agent's update lock.

Nothing here imports flwr (the agent-only install has none): the SuperNode is a program on ``PATH``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.identity import KEY_FILE
from edge_agent.learning.roundlock import RoundLockServer
from edge_agent.process import RestartPolicy, Service, UpdateLock
from fedge_common.files import atomic_write
from fedge_common.quiet import QUIET_ENV
from fedge_protocol import CommandAck, CommandState
from fedge_protocol.federation import NodeKey

if TYPE_CHECKING:
    from edge_agent.config import AgentSettings

__all__ = [
    "FL_DIR",
    "DeviceData",
    "Membership",
    "SupernodeConfig",
    "SupernodeError",
    "SupernodeService",
    "node_config",
    "openssh_private_key",
    "openssh_public_key",
    "read_status",
    "write_openssh_key",
]

log = logging.getLogger("fedge.agent.learning.supernode")

FL_DIR = "fl"
JOINS_FILE = "joins.json"
STATUS_FILE = "supernode.json"
LOG_FILE = "supernode.log"
SSH_KEY_FILE = "supernode-key"
CA_FILE = "superlink-ca.pem"
NODE_CONFIG_FILE = "node-config.toml"
FLWR_HOME_DIR = "flwr-home"
PROGRAM = "flower-supernode"
INSTALL_HINT = "pip install 'fedge[agent,train]'"
LOG_ROTATE_BYTES = 10 * 1024 * 1024

# The ClientApp's --node-config keys (the protocol's, as in edge_agent/learning/clientapp.py).
NODE_DATA_PATH = NodeKey.DATA_PATH
NODE_STATE_DIR = NodeKey.STATE_DIR
NODE_DATASET_ID = NodeKey.DATASET_ID
NODE_PRIVACY_BUDGET = NodeKey.PRIVACY_BUDGET
NODE_PRIVACY_DELTA = NodeKey.PRIVACY_DELTA
NODE_PRIVACY_ACCOUNTANT = NodeKey.PRIVACY_ACCOUNTANT
NODE_REQUIRE_DP = NodeKey.REQUIRE_DP

_NODE_ID = re.compile(rb"SuperNode ID: (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_HEADER = "--- fedge-agent"
Record = Callable[[dict[str, Any]], int]


class SupernodeError(Exception):
    """The SuperNode cannot run here, or it ended before it joined (with its last log lines)."""


# ------------------------------------------------------------------ what the device decides
@dataclass(frozen=True)
class DeviceData:
    """The device's side of FL (``FEDGE_AGENT_FL_*``): its data file, never sent anywhere, and the
    privacy budget it grants on that dataset, all jobs together."""

    path: Path
    dataset: str
    budget_epsilon: float = 0.0
    delta: float = 1e-5
    accountant: str = "prv"
    require_dp: bool = False

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> DeviceData | None:
        """None when the settings name no training data."""
        if settings.fl_data_path is None:
            return None
        path = Path(settings.fl_data_path).expanduser()
        return cls(
            path=path,
            dataset=settings.fl_dataset or path.stem,
            budget_epsilon=settings.fl_privacy_budget,
            delta=settings.fl_privacy_delta,
            accountant=settings.fl_privacy_accountant,
            require_dp=settings.fl_require_dp,
        )


def node_config(state_dir: Path, data: DeviceData) -> dict[str, str | float | bool]:
    """The SuperNode's ``--node-config``: what the ClientApp reads from ``context.node_config``."""
    return {
        NODE_DATA_PATH: str(Path(data.path).resolve()),
        NODE_STATE_DIR: str(Path(state_dir).resolve()),
        NODE_DATASET_ID: data.dataset,
        NODE_PRIVACY_BUDGET: float(data.budget_epsilon),
        NODE_PRIVACY_DELTA: float(data.delta),
        NODE_PRIVACY_ACCOUNTANT: data.accountant,
        NODE_REQUIRE_DP: bool(data.require_dp),
    }


def _toml_value(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # finite (the settings refuse inf/nan): 0.5, 1e-05
    return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's


def render_node_config(config: Mapping[str, str | float | bool]) -> str:
    """A TOML file for ``--node-config FILE.toml`` (paths with spaces or quotes need no shell quoting)."""
    lines = ["# written by fedge-agent: the ClientApp's node config (edge_agent/learning/clientapp.py)"]
    lines += [f"{json.dumps(key)} = {_toml_value(value)}" for key, value in config.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the device key for Flower
def _device_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((Path(state_dir) / KEY_FILE).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SupernodeError("the device key is not an EC P-256 key")
    return key


def openssh_private_key(state_dir: Path) -> bytes:
    """The enrolled device key in OpenSSH format (what ``--auth-supernode-private-key`` reads)."""
    return _device_key(state_dir).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def openssh_public_key(state_dir: Path) -> bytes:
    """The device's public key in OpenSSH format (``ecdsa-sha2-nistp256 ...``)."""
    return (
        _device_key(state_dir)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )


def write_openssh_key(state_dir: Path, dest: Path) -> Path:
    """Write the OpenSSH export of the device key to ``dest`` (0600, atomically); an export of the same
    key already there is kept (the format holds random check bytes, so bytes differ between exports)."""
    key = _device_key(state_dir)
    with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
        existing = serialization.load_ssh_private_key(dest.read_bytes(), password=None)
        if isinstance(existing, ec.EllipticCurvePrivateKey) and (
            existing.private_numbers() == key.private_numbers()
        ):
            os.chmod(dest, 0o600)
            return dest
    atomic_write(dest, openssh_private_key(state_dir), mode=0o600)
    return dest


# ------------------------------------------------------------------ joins
@dataclass(frozen=True)
class SupernodeConfig:
    """What the SuperNode's command line depends on: the same for every job it serves."""

    superlink: str
    root_certificate: str
    node_auth: bool = True


@dataclass
class Membership:
    """The device in one FL job, joined by an ``fl-join`` command."""

    job_id: str
    command_id: str
    joined_at: float = field(default_factory=time.time)
    leave_after: float | None = None
    node_id: int | None = None
    """The node id the controller registered for this device's key (the command's)."""


@dataclass(frozen=True)
class JoinOutcome:
    replaced: list[Membership]
    """Jobs left because this join needs a SuperNode configured differently (another SuperLink)."""
    connected: bool
    node_id: int | None
    pid: int | None
    runtime_port: int | None


def _ack(command_id: str, state: CommandState, **extra: Any) -> dict[str, Any]:
    return CommandAck(command_id=command_id, state=state, **extra).model_dump(mode="json", exclude_none=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ processes (Linux /proc)
def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a live process, None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[2])


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
    except OSError:
        return []


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    found = []
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
            found.append(pid)
    return found


def processes_naming(token: str) -> list[int]:
    """Live processes with ``token`` as one of their arguments (e.g. ``127.0.0.1:<runtime port>``, which
    the SuperNode's ``flower-superexec`` and ``flwr-clientapp`` children carry)."""
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid != me and token in _cmdline(pid):
            st = _stat(pid)
            if st is not None and st[0] not in ("Z", "X"):
                found.append(pid)
    return found


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


_UVICORN = re.compile(r"^INFO:\s|^INFO :\s+FastAPI lifespan")


def _log_tail(path: Path, start: int = 0, lines: int = 6) -> str:
    """The SuperNode's last words since ``start``: Flower's exit report (``Exit Code: N`` and the lines
    after it) when there is one, else its last lines; uvicorn's start/stop chatter left out."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, size - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    kept = [line for line in kept if line and not line.startswith(_HEADER) and not _UVICORN.match(line)]
    exits = [i for i, line in enumerate(kept) if "Exit Code:" in line]
    if exits:
        report = kept[exits[-1] :]
        report = [line for line in report if not line.startswith("For more information")]
        report[0] = "Flower " + report[0][report[0].index("Exit Code:") :]
        return " | ".join(report[: lines + 1])
    return " | ".join(kept[-lines:])


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """What ``fl/supernode.json`` says, with ``alive`` checked against the process table."""
    try:
        status: dict[str, Any] = json.loads((Path(state_dir) / FL_DIR / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    pid = status.get("pid")
    alive = isinstance(pid, int) and _stat(pid) is not None and PROGRAM in " ".join(_cmdline(pid))
    status["alive"] = alive
    if not alive and status.get("state") in ("starting", "connecting", "running"):
        status["state"] = "not running (the agent is stopped?)"
    return status


# ------------------------------------------------------------------ the service
class SupernodeService(Service):
    """The device's Flower SuperNode, a supervised child process (see the module)."""

    name = "fl-supernode"

    def __init__(
        self,
        state_dir: Path,
        data: DeviceData | None,
        *,
        record: Record | None = None,
        update_lock: UpdateLock | None = None,
        policy: RestartPolicy | None = None,
        max_delay: float = 120.0,
        connect_timeout: float = 60.0,
        grace: float = 10.0,
        executable: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.data = data
        self.record = record
        self.update_lock = update_lock or UpdateLock()
        self.policy = policy or RestartPolicy(limit=6, window=900.0, delay=5.0)
        self.restart: RestartPolicy | None = RestartPolicy(self.policy.limit + 1, self.policy.window, 0.0)
        """What the agent process reads: no delay of its own (the service waits, see :meth:`healthy`) and
        one restart more than the service's policy, so the service gives up first and the agent goes on."""
        self.max_delay = max_delay
        self.connect_timeout = connect_timeout
        self.grace = grace
        self.executable = executable
        self.clock = clock
        self.dir = self.state_dir / FL_DIR
        self.log_path = self.dir / LOG_FILE
        self.rounds = RoundLockServer(self.state_dir, self.update_lock, on_change=self._write_status)
        self._lock = threading.RLock()
        self._status_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._log_start = 0
        self._started_at: float | None = None
        self._node_id: int | None = None
        self._joining = False
        self._config: SupernodeConfig | None = None
        self._jobs: dict[str, Membership] = {}
        self._crashes: deque[float] = deque()
        self._retry_at: float | None = None
        self.last_delay: float | None = None
        """The backoff before the latest restart (seconds)."""
        self._failure: str | None = None
        self._state = "idle"
        self._load()

    # ------------------------------------------------------------ persistence
    def _load(self) -> None:
        try:
            raw = json.loads((self.dir / JOINS_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return
        try:
            self._config = SupernodeConfig(**raw["config"]) if raw.get("config") else None
            self._jobs = {m["job_id"]: Membership(**m) for m in raw.get("jobs", [])}
        except (TypeError, KeyError) as exc:
            log.warning("ignoring %s: %s", self.dir / JOINS_FILE, exc)
            self._config, self._jobs = None, {}

    def _save(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = {
            "config": asdict(self._config) if self._config and self._jobs else None,
            "jobs": [asdict(m) for m in self._jobs.values()],
        }
        atomic_write(self.dir / JOINS_FILE, json.dumps(body, indent=1).encode())

    def status(self) -> dict[str, Any]:
        """The SuperNode's state for ``fedge-agent status`` (also written to ``fl/supernode.json``).
        Takes no lock (the round-lock threads call it while the service may be stopping them)."""
        proc, config = self._proc, self._config
        return {
            "state": self._state,
            "pid": proc.pid if proc is not None and proc.poll() is None else None,
            "superlink": config.superlink if config else None,
            "node_auth": config.node_auth if config else None,
            "runtime_port": self._port,
            "node_id": self._node_id,
            "started_at": self._started_at,
            "jobs": [asdict(m) for m in list(self._jobs.values())],
            "rounds_in_progress": self.rounds.holders(),
            "recent_crashes": len(self._crashes),
            "restart_in": max(self._retry_at - time.monotonic(), 0.0) if self._retry_at is not None else None,
            "last_failure": self._failure,
            "log": str(self.log_path),
        }

    def _write_status(self) -> None:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            body = json.dumps(self.status(), indent=1).encode()
            with self._status_lock:
                atomic_write(self.dir / STATUS_FILE, body, fsync=False)
        except OSError:
            log.exception("could not write %s", self.dir / STATUS_FILE)

    def memberships(self) -> list[Membership]:
        with self._lock:
            return list(self._jobs.values())

    # ------------------------------------------------------------ Service
    def start(self) -> None:
        """Serve the round lock; start the SuperNode when the device is in a job (after a restart)."""
        with self._lock:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._kill_stale()
            self._expire()
            try:
                self.rounds.start()
                if self._jobs and self._config is not None and self._proc is None:
                    self._spawn(self._config)
            except (SupernodeError, OSError) as exc:  # FL cannot run here any more: the agent goes on
                self._give_up(f"the FL SuperNode cannot start: {exc}")
            self._write_status()

    def stop(self) -> None:
        with self._lock:
            self._retry_at = None
            self._terminate()
            self.rounds.stop()
            if self._state not in ("failed", "idle"):
                self._state = "stopped"
            self._write_status()

    def healthy(self) -> bool:
        """False once the SuperNode ended by itself and its backoff passed (the agent process then
        restarts it: ``stop()``, ``start()``). The backoff (``policy.delay``, doubling per crash within
        ``policy.window``, at most ``max_delay``) is waited here, reporting healthy meanwhile, so that the
        agent's supervision of its other services never blocks on it. After ``policy.limit`` crashes the
        service gives up (see the module) and stays healthy: FL is off, the agent goes on."""
        with self._lock:
            self._expire()
            if self._retry_at is not None:
                if time.monotonic() < self._retry_at:
                    return True
                self._retry_at = None
                return False
            proc = self._proc
            if proc is None or self._joining:
                return True
            if proc.poll() is None:
                if self._node_id is None and (node_id := self._logged_node_id()) is not None:
                    self._node_id, self._state = node_id, "running"
                    log.info("%s joined the SuperLink as node %s", PROGRAM, node_id)
                    self._write_status()
                return True
            code = proc.returncode
            tail = _log_tail(self.log_path, self._log_start)
            self._proc = None
            self._reap_group(proc.pid)
            self._crashed(f"{PROGRAM} exited with code {code}" + (f": {tail}" if tail else ""))
            return True

    def _crashed(self, failure: str) -> None:
        """Count a crash: schedule the restart after its backoff, or give up when the policy is used up."""
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.policy.window:
            self._crashes.popleft()
        self._failure = failure
        if len(self._crashes) >= self.policy.limit:
            self._give_up(f"{failure} (gave up after {len(self._crashes)} crashes)")
            return
        delay = min(self.policy.delay * 2 ** (len(self._crashes) - 1), self.max_delay)
        self.last_delay = delay
        self._retry_at = now + delay
        self._state = "restarting"
        log.warning("%s; restarting it in %.3g s", failure, delay)
        self._write_status()

    def failure(self) -> str | None:
        return self._failure

    # ------------------------------------------------------------ joining and leaving
    def join(self, command_id: str, config: SupernodeConfig, member: Membership) -> JoinOutcome:
        """Take part in ``member.job_id`` (joined by ``command_id``): (re)start the SuperNode unless one
        with ``config`` runs, wait until it joined the SuperLink (its node id in the log) or
        ``connect_timeout`` passed (it keeps trying: ``connected`` False). Raises :class:`SupernodeError`
        when it ended first (refused: its last log lines say why); the membership is then not kept.

        Earlier joins this one ends are acknowledged ``succeeded`` here: an earlier fl-join of the same
        job ("joined again"), and every other job when ``config`` differs ("replaced")."""
        if self.data is None:
            raise SupernodeError("this device has no FL training data (FEDGE_AGENT_FL_DATA_PATH)")
        member.command_id = command_id
        with self._lock:
            previous = self._jobs.get(member.job_id)
            if previous is not None and previous.command_id != command_id:
                del self._jobs[member.job_id]
                self._ended(previous, f"joined again by command {command_id}")
            replaced: list[Membership] = []
            running = self._proc is not None and self._proc.poll() is None
            spawned = self._config != config or not running
            if spawned:
                self._program()  # not installed: refuse before stopping anything
                if self._config != config:
                    replaced = list(self._jobs.values())
                    self._jobs = {}
                    for other in replaced:
                        self._ended(other, f"replaced by job {member.job_id} on {config.superlink}")
                self._terminate()
                self._crashes.clear()
                self._retry_at = None
                self._failure = None
                try:
                    self._spawn(config)
                except OSError as exc:
                    raise SupernodeError(f"{PROGRAM} did not start: {exc}") from exc
            self._joining = True
            proc = self._proc
        try:
            if spawned:
                connected = self._wait_joined(proc)
            else:
                connected = self._node_id is not None or self._logged_node_id() is not None
        except SupernodeError as exc:
            with self._lock:
                self._joining = False
                if self._proc is proc:
                    self._proc = None
                if self._jobs:  # the jobs it served before: like a crash, restarted after a backoff
                    self._crashed(str(exc))
                else:
                    self._config, self._state, self._failure = None, "failed", str(exc)
                self._save()
                self._write_status()
            raise
        with self._lock:
            self._joining = False
            self._config = config
            self._jobs[member.job_id] = member
            self._state = "running" if connected else "connecting"
            self._save()
            self._write_status()
            return JoinOutcome(
                replaced=replaced,
                connected=connected,
                node_id=self._node_id,
                pid=proc.pid if proc is not None else None,
                runtime_port=self._port,
            )

    def leave(self, job_id: str, reason: str) -> Membership | None:
        """Leave a job (its fl-join is acknowledged ``succeeded`` with ``result.left = reason``); the
        SuperNode stops when no job is left. The membership, or None when the device was not in it."""
        with self._lock:
            member = self._jobs.pop(job_id, None)
            if member is not None:
                self._ended(member, reason)
                if not self._jobs:
                    self._terminate()
                    self._retry_at = None
                    self._config = None
                    self._state = "idle"
            self._save()
            self._write_status()
            return member

    def _expire(self) -> None:
        """Leave every job whose ``leave_after`` passed."""
        now = self.clock()
        for member in [m for m in self._jobs.values() if m.leave_after is not None and m.leave_after <= now]:
            log.info("leaving FL job %s: its leave_after passed", member.job_id)
            self.leave(member.job_id, "leave_after passed")

    def _ended(self, member: Membership, left: str) -> None:
        result = {"job_id": member.job_id, "left": left}
        self._emit(_ack(member.command_id, CommandState.SUCCEEDED, result=result))

    def _give_up(self, reason: str) -> None:
        log.error("FL SuperNode given up: %s", reason)
        self._terminate()
        for member in self._jobs.values():
            self._emit(_ack(member.command_id, CommandState.FAILED, error=reason, job_id=member.job_id))
        self._jobs, self._config = {}, None
        self._failure = reason
        self._retry_at = None
        self._state = "failed"
        self._save()
        self._write_status()

    def _emit(self, body: dict[str, Any]) -> None:
        if self.record is not None:
            try:
                self.record(body)
            except Exception:
                log.exception("could not record %s", body)

    # ------------------------------------------------------------ the child process
    def _program(self) -> str:
        if self.executable is not None:
            return self.executable
        local = Path(sys.executable).parent / PROGRAM
        if local.is_file() and os.access(local, os.X_OK):
            return str(local)
        found = shutil.which(PROGRAM)
        if found is None:
            raise SupernodeError(
                f"{PROGRAM} is not installed on this device; install it with: {INSTALL_HINT}"
            )
        return found

    def _environment(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(QUIET_ENV, FLWR_HOME=str(home), PYTHONUNBUFFERED="1")
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
        return env

    def _prepare(self, config: SupernodeConfig) -> tuple[list[str], int]:
        assert self.data is not None
        program = self._program()
        home = self.dir / FLWR_HOME_DIR
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        toml = (
            "# fedge-agent: the FLWR_HOME of this device's flower-supernode. No SuperLink connections here\n"
            "# (the agent passes --superlink); written so that flwr never creates its default file.\n"
            "[superlink]\n"
        )
        if not (home / "config.toml").is_file() or (home / "config.toml").read_text() != toml:
            atomic_write(home / "config.toml", toml.encode())
        atomic_write(self.dir / CA_FILE, config.root_certificate.encode())
        atomic_write(
            self.dir / NODE_CONFIG_FILE, render_node_config(node_config(self.state_dir, self.data)).encode()
        )
        port = _free_port()
        argv = [
            program,
            "--superlink",
            config.superlink,
            "--root-certificates",
            str(self.dir / CA_FILE),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--node-config",
            str(self.dir / NODE_CONFIG_FILE),
            "--isolation",
            "subprocess",
        ]
        if config.node_auth:
            key = write_openssh_key(self.state_dir, self.dir / SSH_KEY_FILE)
            argv += ["--auth-supernode-private-key", str(key)]
        return argv, port

    def _spawn(self, config: SupernodeConfig) -> None:
        argv, self._port = self._prepare(config)
        if self.log_path.exists() and self.log_path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(self.log_path, self.log_path.with_name(LOG_FILE + ".1"))
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._log_start = os.lseek(fd, 0, os.SEEK_END)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            os.write(fd, f"{_HEADER} {stamp}: {' '.join(argv)}\n".encode())
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=self._environment(self.dir / FLWR_HOME_DIR),
                cwd=self.dir,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(fd)
        self._config = config
        self._started_at = self.clock()
        self._node_id = None
        self._state = "starting"
        log.info(
            "%s started (pid %s, runtime port %s) for %s",
            PROGRAM,
            self._proc.pid,
            self._port,
            config.superlink,
        )
        self._write_status()

    def _wait_joined(self, proc: subprocess.Popen[bytes] | None) -> bool:
        """Until the SuperNode logs its node id (True), ends (SupernodeError), or connect_timeout (False)."""
        assert proc is not None
        deadline = time.monotonic() + self.connect_timeout
        while True:
            node_id = self._logged_node_id()
            if node_id is not None:
                with self._lock:
                    self._node_id = node_id
                return True
            if proc.poll() is not None:
                self._reap_group(proc.pid)
                tail = _log_tail(self.log_path, self._log_start)
                raise SupernodeError(
                    f"{PROGRAM} exited with code {proc.returncode}" + (f": {tail}" if tail else "")
                )
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def _logged_node_id(self) -> int | None:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_start)
                found = _NODE_ID.findall(fh.read())
        except OSError:
            return None
        return int(found[-1]) if found else None

    def _terminate(self) -> None:
        """Stop the SuperNode and everything it started; return once no such process is left."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self._reap_group(proc.pid)
            log.info("%s stopped (pid %s, exit code %s)", PROGRAM, proc.pid, proc.returncode)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / SSH_KEY_FILE).unlink()
        self._node_id = None
        self._started_at = None

    def _reap_group(self, pgid: int) -> None:
        """SIGTERM what is left of the group and of the Runtime port's users, SIGKILL after ``grace``."""
        port_token = f"127.0.0.1:{self._port}" if self._port else None

        def left() -> list[int]:
            pids = set(group_members(pgid))
            if port_token is not None:
                pids |= set(processes_naming(port_token))
            return sorted(pids)

        pids = left()
        if not pids:
            return
        _signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while (pids := left()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pids:
            _signal(pids, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while left() and time.monotonic() < deadline:
                time.sleep(0.1)

    def _kill_stale(self) -> None:
        """A SuperNode left by an agent that was killed (SIGKILL, power loss is moot): end it first."""
        try:
            old = json.loads((self.dir / STATUS_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return
        pid, port = old.get("pid"), old.get("runtime_port")
        if self._proc is not None:
            return
        if pid and str(self.dir / NODE_CONFIG_FILE) in _cmdline(int(pid)):
            log.warning("ending %s pid %s left by an earlier agent", PROGRAM, pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGTERM)
            saved, self._port = self._port, port
            self._reap_group(int(pid))
            self._port = saved
        elif port:
            saved, self._port = self._port, port
            self._reap_group(-1)
            self._port = saved
