"""The controller's side of the fleet topics: publish each device's signed desired state (retained,
QoS 1) when it changes and whenever the service client (re)connects, and take state/telemetry messages
through the same code path as the HTTP status report, once per outbox sequence number."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable

from controller.db.models import DeviceCommand
from controller.fleet.broker.base import Broker
from controller.fleet.commands import Commands
from controller.fleet.deployments import Rollouts
from controller.fleet.devices import ACTIVE, Fleet
from controller.fleet.ingest import IngestQueue, incoming
from controller.observability.events import counted_receive
from fedge_protocol import Leaf, OutboxMessage, StatusReport, device_topic, every_device, split_device_topic

log = logging.getLogger("fedge.broker.messaging")


class FleetMessaging:
    """Glue between a ``Broker`` and the fleet (devices, rollouts)."""

    def __init__(
        self, broker: Broker, fleet: Fleet, rollouts: Rollouts, commands: Commands | None = None
    ) -> None:
        self.broker, self.fleet, self.rollouts, self.commands = broker, fleet, rollouts, commands
        self._observers: list[Callable[[str, OutboxMessage], None]] = []
        self._last_seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pending: queue.Queue[list[str] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.ingest = IngestQueue(fleet, rollouts, commands, accept=self._accept, observers=self._observers)
        """State and telemetry messages, applied in batches off the network thread (:mod:`..ingest`)."""

    def start(self) -> None:
        # shared among replicas: each device message is ingested by exactly one controller
        self.broker.subscribe(every_device(Leaf.STATE), self._on_message, shared=True)
        self.broker.subscribe(every_device(Leaf.TELEMETRY), self._on_message, shared=True)
        self.broker.on_connected = self.publish_all
        self.fleet.events.subscribe(self)
        self.ingest.start()
        self._worker = threading.Thread(target=self._publisher, daemon=True, name="fedge-desired-publisher")
        self._worker.start()
        self.broker.start()

    def stop(self) -> None:
        self.fleet.events.unsubscribe(self)
        self._pending.put(None)
        if self._worker is not None:
            self._worker.join(10)
        self.broker.stop()
        self.ingest.stop()  # after the broker: what it acknowledged is written before we return

    def observe(self, observer: Callable[[str, OutboxMessage], None]) -> None:
        """Call ``observer(device_id, message)`` for every device message accepted (once per outbox
        sequence, in arrival order, before it is applied): for metrics and audits."""
        self._observers.append(observer)

    def desired_changed(self, device_ids: list[str]) -> None:
        """Queue a publish (requests do not wait for the broker's acknowledgements)."""
        self._pending.put(list(device_ids))

    def _publisher(self) -> None:
        while (batch := self._pending.get()) is not None:
            self.publish_desired(batch)

    # ------------------------------------------------------------ desired state
    def publish_desired(self, device_ids: list[str], chunk: int = 100) -> None:
        """Sign and publish (retained, QoS 1) each device's desired state, ``chunk`` devices' publishes
        in flight together (a rollout to 1,000 devices is not 1,000 broker round trips in a row)."""
        for start in range(0, len(device_ids), chunk):
            messages: list[tuple[str, bytes]] = []
            for device_id in device_ids[start : start + chunk]:
                try:
                    envelope, _ = self.fleet.signed_desired_state(device_id)
                except Exception:
                    log.exception("cannot build the desired state of %s", device_id)
                    continue
                messages.append((device_topic(device_id, Leaf.DESIRED), json.dumps(envelope).encode()))
            acked = self.broker.publish_many(messages, 1, True)
            for (topic, _), ok in zip(messages, acked, strict=True):
                if not ok:
                    log.warning("%s not acknowledged by the broker (the agent still polls)", topic)

    def command_created(self, command: DeviceCommand) -> None:
        """Push a new command (signed) on the device's ``cmd`` topic, QoS 1, not retained: an agent that is
        offline gets it from its next HTTP poll instead. Published from a thread: requests do not wait."""

        def publish() -> None:
            assert self.commands is not None
            try:
                envelope = self.commands.signed(command)
            except Exception:
                log.exception("cannot sign command %s", command.id)
                return
            topic = device_topic(command.device_id, Leaf.CMD)
            if not self.broker.publish(topic, json.dumps(envelope).encode(), 1, False):
                log.warning("command %s not acknowledged by the broker (the agent polls)", command.id)

        threading.Thread(target=publish, daemon=True, name="fedge-command-publisher").start()

    def publish_all(self) -> None:
        """Every active device's desired state (a restarted broker without persistence lost them)."""
        self.publish_desired([d.id for d in self.fleet.list() if d.status == ACTIVE])

    def device_revoked(self, device_id: str) -> None:
        device = self.fleet.get(device_id)
        serial = int(device.cert_serial, 16) if device.cert_serial else None
        self.broker.revoke_device(device_id, serial)
        self.broker.publish(device_topic(device_id, Leaf.DESIRED), b"", 1, True)  # clear the retained copy

    # ------------------------------------------------------------ device messages
    def _accept(self, device_id: str, seq: int) -> bool:
        """True once per (device, outbox sequence); sequences only grow, so older ones are replays."""
        with self._lock:
            last = self._last_seq.get(device_id)
            if last is None:
                reported = self.fleet.get(device_id).reported or {}
                last = int(reported.get("seq") or 0)
            if seq <= last:
                return False
            self._last_seq[device_id] = seq
            return True

    @counted_receive
    def _on_message(self, topic: str, payload: bytes) -> None:
        found = split_device_topic(topic)
        if found is None:
            return
        device_id, leaf = found  # the broker ACL guarantees the sender is this device
        if leaf not in (Leaf.STATE, Leaf.TELEMETRY):
            return
        try:
            message = OutboxMessage.model_validate({**json.loads(payload), "kind": leaf})
        except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
            log.warning("malformed %s message from %s", leaf, device_id)
            return
        report = None
        if message.kind == Leaf.STATE:
            try:
                report = StatusReport.model_validate(message.body).model_dump()
            except ValueError:
                log.warning("malformed status report seq %s from %s", message.seq, device_id)
                return
            report["seq"] = message.seq
        # activity, deduplication and the writes happen on the ingest worker, never on this thread
        self.ingest.submit(incoming(device_id, message, report))
