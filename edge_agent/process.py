"""The agent process: a host for long-running services, and the update lock.

``AgentProcess(services).run()`` starts each :class:`Service` in order, then supervises them until its
stop event is set (SIGTERM/SIGINT, once :meth:`AgentProcess.install_signal_handlers` was called, or
:meth:`AgentProcess.request_stop`), then stops them in reverse order. A service that fails to start stops
the ones already started (:class:`ServiceStartError`); one that turns unhealthy is restarted when it has a
:class:`RestartPolicy`, else it ends the process (:class:`ServiceFailed`). Either error is one line,
meant for stderr and a non-zero exit.

A service is anything with a ``name``, ``start()`` (returns once it runs), ``stop()`` (returns once it
stopped) and ``healthy()``: a thread (the deploy loop, the command worker), a server (the local API), a
client with its own network loop (MQTT), or later a supervised child process (a Flower SuperNode, whose
``healthy()`` is False once the child ended and whose policy restarts it).

:class:`UpdateLock` is balena's update lock (``lib/update-lock.ts``): work that must not be interrupted
holds it (a grid run now, an FL round later), and a model update that arrives meanwhile waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("fedge.agent.process")


class ServiceError(Exception):
    """The agent process cannot go on: a service did not start, or stopped and may not be restarted."""


class ServiceStartError(ServiceError):
    """A service's ``start()`` raised; the services started before it were stopped again."""


class ServiceFailed(ServiceError):
    """A running service turned unhealthy and its restart policy (if any) is used up."""


@dataclass(frozen=True)
class RestartPolicy:
    """Restart an unhealthy service after ``delay`` seconds, at most ``limit`` times within ``window``
    seconds (systemd's ``StartLimitBurst``/``StartLimitIntervalSec``); beyond that the process ends."""

    limit: int = 5
    window: float = 300.0
    delay: float = 1.0


class Service(ABC):
    """One long-running part of the agent, hosted by :class:`AgentProcess`."""

    name: str = "service"
    restart: RestartPolicy | None = None
    """None: an unhealthy service ends the process (the unit's ``Restart=on-failure`` takes over)."""

    @abstractmethod
    def start(self) -> None:
        """Start running (return once running); raise when it cannot."""

    @abstractmethod
    def stop(self) -> None:
        """Stop and release what ``start`` took (return once stopped); safe to call when not running."""

    def healthy(self) -> bool:
        """False once the service stopped by itself (its thread or child ended): checked by the host."""
        return True

    def failure(self) -> str | None:
        """Why the service is unhealthy, when it knows (shown in the error)."""
        return None


class AgentProcess:
    """Runs services: start in order, supervise, stop in reverse order. One stop event for the process."""

    def __init__(
        self,
        services: Sequence[Service],
        *,
        stop: threading.Event | None = None,
        check_interval: float = 1.0,
    ) -> None:
        names = [s.name for s in services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        self.services = list(services)
        self.stop_event = stop or threading.Event()
        self.check_interval = check_interval
        self._started: list[Service] = []
        self._restarts: dict[str, deque[float]] = {}

    # ------------------------------------------------------------ stop event
    def request_stop(self) -> None:
        self.stop_event.set()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM and SIGINT set the stop event (main thread only; the CLI calls this, importing does
        not). Returns a function that puts the previous handlers back."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("%s: stopping", signal.Signals(signum).name)
            self.stop_event.set()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start every service in order; on a failure stop those already started (reverse order) and
        raise :class:`ServiceStartError`."""
        for service in self.services:
            try:
                service.start()
            except Exception as exc:
                self.shutdown()
                raise ServiceStartError(f"service {service.name!r} did not start: {_one_line(exc)}") from exc
            self._started.append(service)
            log.debug("service %s started", service.name)

    def shutdown(self) -> None:
        """Stop the started services in reverse order; a stop that raises is logged, the rest still stop."""
        while self._started:
            service = self._started.pop()
            try:
                service.stop()
            except Exception:
                log.exception("service %s did not stop cleanly", service.name)

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Start, call ``ready``, supervise until the stop event is set, stop. Raises :class:`ServiceError`
        (after stopping everything) when a service does not start or fails for good."""
        self.start()
        try:
            if ready is not None:
                ready()
            while not self.stop_event.wait(self.check_interval):
                self.supervise()
        finally:
            self.shutdown()

    def supervise(self) -> None:
        """One health check of every started service: restart by policy, else raise ServiceFailed."""
        for service in list(self._started):
            if self.stop_event.is_set() or service.healthy():
                continue
            reason = service.failure()
            what = f"service {service.name!r} stopped unexpectedly" + (f": {reason}" if reason else "")
            if not self._may_restart(service):
                raise ServiceFailed(what)
            log.warning("%s; restarting it", what)
            self._restart(service)

    def _may_restart(self, service: Service) -> bool:
        policy = service.restart
        if policy is None:
            return False
        now = time.monotonic()
        recent = self._restarts.setdefault(service.name, deque())
        while recent and now - recent[0] > policy.window:
            recent.popleft()
        if len(recent) >= policy.limit:
            return False
        recent.append(now)
        return True

    def _restart(self, service: Service) -> None:
        assert service.restart is not None
        try:
            service.stop()
        except Exception:
            log.exception("service %s did not stop cleanly before its restart", service.name)
        if self.stop_event.wait(service.restart.delay):
            return
        try:
            service.start()
        except Exception as exc:  # counted like a failure: the next check restarts it again (or gives up)
            log.warning("service %s did not restart: %s", service.name, _one_line(exc))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------ update lock
class UpdateLock:
    """Work that must not be interrupted holds this lock; a model update waits until nobody holds it.

    Holders are counted per name (``acquire("grid-run:<id>")`` twice needs two releases), and several
    holders may hold it at once: the lock excludes updates, not other work. The updater never blocks on
    it: :meth:`updating` says whether it may update now, and while it updates, :meth:`acquire` waits (a
    grid run starting during an activation begins after it). A refused update is deferred by its caller,
    which :meth:`on_release` callbacks tell when the last holder let go. In-process only: a
    ``fedge-agent grid run`` in another process does not hold the running agent's lock.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holders: dict[str, int] = {}
        self._updating = False
        self._listeners: list[Callable[[], None]] = []

    @property
    def held(self) -> bool:
        with self._cond:
            return bool(self._holders)

    def holders(self) -> dict[str, int]:
        """Who holds it, and how many times."""
        with self._cond:
            return dict(self._holders)

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (outside the lock, in the releasing thread) each time the last holder lets go."""
        with self._cond:
            self._listeners.append(callback)

    def acquire(self, holder: str, timeout: float | None = None) -> bool:
        """Hold the lock as ``holder`` (again, if it already does); waits while an update is being applied.
        False when ``timeout`` passed first."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._updating, timeout):
                return False
            self._holders[holder] = self._holders.get(holder, 0) + 1
            return True

    def release(self, holder: str) -> None:
        """Undo one ``acquire`` by ``holder``; the release callbacks run when nobody holds it any more."""
        with self._cond:
            count = self._holders.get(holder, 0)
            if count == 0:
                raise RuntimeError(f"the update lock is not held by {holder!r}")
            if count == 1:
                del self._holders[holder]
            else:
                self._holders[holder] = count - 1
            free = not self._holders
            listeners = list(self._listeners) if free else []
        for callback in listeners:
            try:
                callback()
            except Exception:
                log.exception("update-lock release callback failed")

    @contextlib.contextmanager
    def hold(self, holder: str) -> Iterator[None]:
        """``with lock.hold("grid-run:<id>"): ...``"""
        self.acquire(holder)
        try:
            yield
        finally:
            self.release(holder)

    @contextlib.contextmanager
    def updating(self) -> Iterator[bool]:
        """``with lock.updating() as free:`` True when nobody holds the lock: new holders then wait until
        the block ends. False when it is held: do not update now, defer."""
        with self._cond:
            free = not self._holders and not self._updating
            if free:
                self._updating = True
        try:
            yield free
        finally:
            if free:
                with self._cond:
                    self._updating = False
                    self._cond.notify_all()
