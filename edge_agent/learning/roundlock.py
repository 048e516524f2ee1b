"""The FL round lock: a ClientApp round holds the agent's :class:`~edge_agent.process.UpdateLock`.

The ClientApp runs in a ``flwr-clientapp`` process that the SuperNode starts for each message; the update
lock lives in the agent process. They meet on a Unix socket, ``<state dir>/fl/round.sock`` (0600, in the
0700 state directory), served by :class:`RoundLockServer` (the SuperNode service starts it):

1. the round connects and sends one line, ``hold <name>``;
2. the agent acquires the update lock as ``fl-round <name>`` (this waits while a model swap is being
   applied) and answers ``held``;
3. the round runs, then closes the connection; the agent releases the lock on end-of-file.

The kernel closes the connection whenever the round's process ends, however it ends (an exception, a
``kill -9``, Flower ending it), so a lock is never left behind. A model update that arrives meanwhile is
deferred and applied when the last holder lets go (the deploy loop's ``on_release``), never mid-round.

The ClientApp side is :func:`round_lock_mod` (a Flower mod: ``ClientApp(mods=[round_lock_mod])``) or
:func:`hold_round` (a context manager). Both find the socket through the SuperNode's ``--node-config``
key ``fedge-state-dir``; without it (the simulation runtime) or without an agent listening, a round runs
without the lock (nothing can swap a model then). Stdlib only: flwr is imported for types only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fedge_protocol.federation import NodeKey

if TYPE_CHECKING:
    from flwr.app import Context, Message

    from edge_agent.process import UpdateLock

__all__ = [
    "NODE_STATE_DIR",
    "SOCKET_NAME",
    "RoundLockError",
    "RoundLockServer",
    "hold_round",
    "round_lock_mod",
    "socket_path",
]

log = logging.getLogger("fedge.agent.learning.roundlock")

FL_DIR = "fl"
SOCKET_NAME = "round.sock"
NODE_STATE_DIR = NodeKey.STATE_DIR
"""The ClientApp's ``--node-config`` key naming the agent's state directory."""
HOLDER_PREFIX = "fl-round "
HELD = b"held\n"
_MAX_LINE = 512
_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes on Linux, NUL included


class RoundLockError(RuntimeError):
    """The agent is there but did not grant the round lock (timeout, refused)."""


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / FL_DIR / SOCKET_NAME


@contextlib.contextmanager
def _sun_path(path: Path) -> Iterator[str]:
    """An address for ``bind``/``connect``: the path itself, or, when it is too long for ``sun_path``,
    the same file reached through an open descriptor of its directory (``/proc/self/fd/N/name``)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def _readline(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < _MAX_LINE:
        chunk = conn.recv(_MAX_LINE - len(data))
        if not chunk:
            break
        data += chunk
    return data


# ------------------------------------------------------------------ agent side
class RoundLockServer:
    """Grants the update lock to FL rounds over ``<state dir>/fl/round.sock`` (see the module)."""

    def __init__(
        self,
        state_dir: Path,
        update_lock: UpdateLock,
        *,
        on_change: Callable[[], None] | None = None,
        poll: float = 0.5,
    ) -> None:
        self.path = socket_path(state_dir)
        self.update_lock = update_lock
        self.on_change = on_change
        self.poll = poll
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._holders: dict[int, str] = {}
        self._workers: set[threading.Thread] = set()
        self._next = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def holders(self) -> list[str]:
        """The rounds holding the lock now."""
        with self._lock:
            return sorted(self._holders.values())

    def start(self) -> None:
        if self.running:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by an agent that did not stop cleanly
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _sun_path(self.path) as address:
                sock.bind(address)
            os.chmod(self.path, 0o600)
            sock.listen(16)
            sock.settimeout(self.poll)
        except BaseException:
            sock.close()
            raise
        self._stop.clear()
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fedge-fl-roundlock")
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening; rounds still connected are released."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for worker in list(self._workers):
            worker.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True, name="fedge-fl-round")
            self._workers.add(worker)
            worker.start()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("round-lock change callback failed")

    def _serve(self, conn: socket.socket) -> None:
        holder: str | None = None
        with self._lock:
            self._next += 1
            ticket = self._next
        try:
            with conn:
                uid = _peer_uid(conn)
                if uid is not None and uid not in (os.getuid(), 0):
                    log.warning("round lock: refusing a connection from uid %s", uid)
                    return
                conn.settimeout(10.0)
                line = _readline(conn).decode("utf-8", "replace").strip()
                verb, _, name = line.partition(" ")
                if verb != "hold":
                    log.warning("round lock: unexpected request %r", line[:80])
                    return
                holder = HOLDER_PREFIX + (" ".join(name.split())[:200] or "?")
                while not self.update_lock.acquire(holder, timeout=self.poll):
                    if self._stop.is_set():
                        holder = None
                        return
                with self._lock:
                    self._holders[ticket] = holder
                self._changed()
                log.info("%s: holds the update lock", holder)
                conn.sendall(HELD)
                conn.settimeout(self.poll)
                while not self._stop.is_set():
                    try:
                        if not conn.recv(64):
                            break  # the round ended (or its process did)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
        except OSError as exc:
            log.warning("round lock: %s", exc)
        finally:
            if holder is not None:
                with self._lock:
                    self._holders.pop(ticket, None)
                self.update_lock.release(holder)
                log.info("%s: released the update lock", holder)
                self._changed()
            self._workers.discard(threading.current_thread())


# ------------------------------------------------------------------ ClientApp side
@contextlib.contextmanager
def hold_round(state_dir: str | Path, name: str, *, timeout: float = 120.0) -> Iterator[bool]:
    """Hold the agent's update lock for the block (True), or run without it when no agent listens on
    ``state_dir`` (False). Raises :class:`RoundLockError` when the agent does not grant it in ``timeout``
    seconds (a model swap that takes that long is stuck; the round fails rather than race it)."""
    path = socket_path(Path(state_dir))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held = False
    try:
        sock.settimeout(timeout)
        try:
            with _sun_path(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            log.debug("no agent listens on %s: the round runs without the update lock", path)
        else:
            try:
                sock.sendall(f"hold {' '.join(name.split())}\n".encode())
                reply = _readline(sock)
            except OSError as exc:
                raise RoundLockError(f"the agent did not grant the round lock: {exc}") from exc
            if reply != HELD:
                raise RoundLockError(f"the agent refused the round lock ({reply[:40]!r})")
            held = True
        yield held
    finally:
        sock.close()


def round_lock_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """A Flower ClientApp mod: every message (train, evaluate) is handled while holding the agent's
    update lock (:func:`hold_round`, socket from ``node_config["fedge-state-dir"]``)."""
    state_dir = context.node_config.get(NODE_STATE_DIR)
    if not state_dir:
        return call_next(msg, context)
    meta = msg.metadata
    name = f"{meta.message_type} run {meta.run_id} round {meta.group_id or _server_round(msg)}"
    with hold_round(str(state_dir), name):
        return call_next(msg, context)


def _server_round(msg: Message) -> str:
    """The round from the train/evaluate config (``server-round``, set by Flower's strategies), or ``-``."""
    try:
        return str(msg.content.config_records["config"]["server-round"])
    except (AttributeError, KeyError, TypeError):
        return "-"
