"""A Flower ``Grid`` that hands each message to its node's own ClientApp in this process (the SecAgg+
protocol tests and ``bench/fl_secagg.py``).

Each message is deep-copied on the way out and its reply on the way back, as a transport would (Flower's
workflows share one ``RecordDict`` between messages, and the client mods edit what they receive). Each
node keeps its own ``Context`` between messages, as a SuperNode does: ``Context.state`` holds the SecAgg+
keys and shares. A ClientApp that raises becomes an error reply (``CLIENT_APP_RAISED_EXCEPTION``), as the
SuperNode makes it. Delivery is sequential, so the time it takes is the devices' compute added up, with no
process start-up, polling or network. Payload bytes are counted per message type, both ways
(:func:`~controller.federation.secagg.payload_bytes`). Nothing leaves the process: no loopback, no Ray.
(``simulator.fl.inprocess`` is the HE benches' variant: one ClientApp for every node, fixed node ids,
dropped replies.)

Before Flower builds any message, the ServerApp side needs ``flwr.supercore.task_identity.TaskIdentity``
set. A ServerApp process has it set; :func:`server_identity` sets it here.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from controller.federation.secagg import payload_bytes

__all__ = ["AppGrid", "server_identity"]


def server_identity(run_id: int = 1) -> None:
    """Set what a ServerApp process has set before Flower's strategies and workflows build messages."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, 1, 0


class AppGrid:
    """Node id -> ClientApp; ``send_and_receive`` runs each message through its node's app."""

    def __init__(self, apps: Mapping[int, ClientApp], *, run_id: int = 1) -> None:
        self.apps = dict(apps)
        self.contexts = {
            n: Context(run_id=run_id, node_id=n, node_config={}, state=RecordDict(), run_config={})
            for n in self.apps
        }
        self.messages: dict[str, dict[int, int]] = defaultdict(lambda: dict.fromkeys(self.apps, 0))
        self.bytes_out: dict[str, int] = defaultdict(int)  # message type -> payload bytes to the nodes
        self.bytes_in: dict[str, int] = defaultdict(int)  # message type -> payload bytes of the replies

    def get_node_ids(self) -> list[int]:
        return list(self.apps)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node, kind = int(msg.metadata.dst_node_id), str(msg.metadata.message_type)
            delivered = copy.deepcopy(msg)
            self.messages[kind][node] += 1
            self.bytes_out[kind] += payload_bytes(delivered.content)
            try:
                reply = self.apps[node](delivered, self.contexts[node])
            except Exception as exc:  # the SuperNode's answer to a raising ClientApp
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(exc)), reply_to=delivered)
            if not reply.has_error():
                self.bytes_in[kind] += payload_bytes(reply.content)
            replies.append(copy.deepcopy(reply))
        return replies
