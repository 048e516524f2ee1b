"""The online learners as a service of the agent process, fed from their sensor topics.

Each learner has an :class:`Ingest`: a bounded queue and one worker thread. The MQTT network thread only
puts the payload in the queue (never blocks, never parses); when the queue is full the message is
dropped and counted as ``burst``. The worker runs the learner (transformer, predict, learn), writes a
checkpoint every ``checkpoint_interval`` seconds when something changed, and never dies of a message: a
refused one is counted by the learner, anything else is logged and counted as ``errors``. Messages still
queued when the agent stops are not processed (the feeds are QoS 0/1 streams, not a ledger); every
learner writes its checkpoint on stop.

One :class:`SensorFeed` (a paho client) per broker serves every learner that reads from it; it
reconnects by itself, so a broker that is down does not fail the agent.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.online.config import MqttFeed, OnlineConfig
from edge_agent.online.errors import Reason, RejectedInput
from edge_agent.online.learner import OnlineLearner
from edge_agent.online.store import LearnerStore
from edge_agent.process import RestartPolicy, Service, ServiceStartError

if TYPE_CHECKING:
    from edge_agent.config import AgentSettings
    from edge_agent.online.routes import OnlineRoutes

log = logging.getLogger("fedge.agent.online")

ONLINE_DIR = "online"


class Ingest:
    """A learner's bounded queue and its worker thread.

    The queue is a ``deque``: ``append`` and ``popleft`` are atomic, so neither side takes a lock per
    message. A lock would make the worker drop the GIL whenever paho's thread holds it, and wait a whole
    switch interval (5 ms) to get it back: 300 messages/s instead of thousands.
    """

    def __init__(self, learner: OnlineLearner, capacity: int) -> None:
        self.learner, self.capacity = learner, capacity
        self.queue: deque[bytes] = deque()
        self.processed = self.errors = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = False
        self.thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self.queue)

    def offer(self, payload: bytes, source: str = "mqtt") -> bool:
        """Queue one message; False (counted as ``burst``) when the queue is full."""
        if len(self.queue) >= self.capacity:
            self.learner.reject(
                RejectedInput(Reason.BURST, f"the ingest queue is full ({self.capacity})"), source
            )
            return False
        self.queue.append(payload)
        if self._idle:
            self._wake.set()
        return True

    def start(self) -> None:
        self._stop.clear()
        self.thread = threading.Thread(
            target=self._run, name=f"online-{self.learner.config.name}", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.thread is not None:
            self.thread.join(30)
            self.thread = None
        if self.queue:
            log.info(
                "online learner %s: %d queued message(s) not processed at stop",
                self.learner.config.name,
                len(self.queue),
            )

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                payload = self.queue.popleft()
            except IndexError:
                self._idle = True
                if not self.queue:  # an offer between popleft and _idle sets no wake: re-check
                    self._wake.wait(0.2)
                self._wake.clear()
                self._idle = False
                self._maybe_checkpoint()
                continue
            try:
                self.learner.update(payload, "mqtt")
            except RejectedInput:
                pass  # counted and logged by the learner
            except Exception:
                self.errors += 1
                log.exception("online learner %s: a message failed", self.learner.config.name)
            self.processed += 1
            self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        if self.learner.checkpoint_due():
            try:
                self.learner.checkpoint()
            except OSError:
                log.exception("online learner %s: checkpoint failed", self.learner.config.name)

    def status(self) -> dict[str, Any]:
        return {"length": len(self.queue), "capacity": self.capacity, "errors": self.errors}


class SensorFeed:
    """One broker, the topic filters of the learners reading from it."""

    def __init__(self, feed: MqttFeed, min_backoff: int = 1, max_backoff: int = 30) -> None:
        parts = urlsplit(feed.broker)
        if not parts.hostname:
            raise ValueError(f"broker URL {feed.broker!r} has no host")
        self.broker, self.host = feed.broker, parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.routes: list[tuple[str, int, Ingest]] = []
        self.connected = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=feed.client_id or "",
            clean_session=feed.client_id is None,
            protocol=mqtt.MQTTv311,
        )
        if parts.scheme == "mqtts":
            client.tls_set(ca_certs=str(feed.ca_file) if feed.ca_file else None)
        if feed.username:
            password = feed.password_file.read_text().strip() if feed.password_file else None
            client.username_pw_set(feed.username, password)
        client.reconnect_delay_set(min_backoff, max_backoff)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    def add(self, topics: Iterable[str], qos: int, ingest: Ingest) -> None:
        for topic in topics:
            self.routes.append((topic, qos, ingest))

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("sensor broker %s refused the connection: %s", self.broker, rc)
            return
        for topic, qos, _ in self.routes:
            client.subscribe(topic, qos=qos)
        self.connected.set()
        log.info("online learning: connected to the sensor broker %s", self.broker)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.connected.is_set():
            log.warning("disconnected from the sensor broker %s (%s); reconnecting", self.broker, rc)
        self.connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        for topic, _, ingest in self.routes:
            if mqtt.topic_matches_sub(topic, msg.topic):
                ingest.offer(bytes(msg.payload))


class OnlineService(Service):
    """Every configured learner, its ingest worker and its sensor feed."""

    name = "online"
    restart = RestartPolicy()

    def __init__(self, learners: Iterable[OnlineLearner], feeds: Iterable[SensorFeed] = ()) -> None:
        self.learners = {learner.config.name: learner for learner in learners}
        self.ingests = {
            name: Ingest(learner, learner.config.buffer) for name, learner in self.learners.items()
        }
        self.feeds = list(feeds)

    @classmethod
    def from_config(cls, config: OnlineConfig, state_dir: Path) -> OnlineService:
        """Learners resumed from ``<state_dir>/online/<name>/``; one feed per broker URL, user and client
        id."""
        learners = [
            OnlineLearner(
                c, LearnerStore(state_dir / ONLINE_DIR / c.name, c.save.keep_versions, background=True)
            )
            for c in config.learners
        ]
        service = cls(learners)
        by_broker: dict[tuple[str, str | None, str | None], SensorFeed] = {}
        for c in config.learners:
            if c.mqtt is None:
                continue
            key = (c.mqtt.broker, c.mqtt.username, c.mqtt.client_id)
            if key not in by_broker:
                by_broker[key] = SensorFeed(c.mqtt)
            by_broker[key].add(c.mqtt.topics, c.mqtt.qos, service.ingests[c.name])
        service.feeds = list(by_broker.values())
        return service

    def start(self) -> None:
        for ingest in self.ingests.values():
            ingest.start()
        for feed in self.feeds:
            feed.start()

    def stop(self) -> None:
        for feed in self.feeds:
            feed.stop()
        for ingest in self.ingests.values():
            ingest.stop()
        for learner in self.learners.values():
            try:
                learner.checkpoint()
            except OSError:
                log.exception("online learner %s: checkpoint at stop failed", learner.config.name)
            if learner.store is not None:
                learner.store.flush()

    def healthy(self) -> bool:
        return all(ingest.alive() for ingest in self.ingests.values())

    def failure(self) -> str | None:
        dead = [name for name, ingest in self.ingests.items() if not ingest.alive()]
        return f"ingest worker(s) stopped: {', '.join(dead)}" if dead else None

    def routes(self) -> OnlineRoutes:
        """The ``/v1/online`` routes for the local API."""
        from edge_agent.online.routes import OnlineRoutes

        return OnlineRoutes(self)

    def status(self, name: str) -> dict[str, Any]:
        """A learner's status with its queue."""
        return {**self.learners[name].status(), "queue": self.ingests[name].status()}


def online_from_settings(settings: AgentSettings) -> OnlineService | None:
    """The learners of ``FEDGE_AGENT_ONLINE_CONFIG`` (None when unset); a bad file or a missing library
    is a :class:`~edge_agent.process.ServiceStartError` (one line, the agent does not start)."""
    if settings.online_config is None:
        return None
    from edge_agent.online.backends import BackendUnavailable
    from edge_agent.online.config import load_config

    try:
        return OnlineService.from_config(load_config(settings.online_config), settings.state_dir)
    except (ValueError, BackendUnavailable) as exc:
        raise ServiceStartError(f"online learners ({settings.online_config}): {exc}") from exc
