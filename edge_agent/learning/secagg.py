"""The device side of secure aggregation: Flower's own ``secaggplus_mod`` in front of the agent's ClientApp.

A SecAgg+ round is four train messages (setup, share keys, collect masked vectors, unmask; see
``controller/federation/secagg.py``). :func:`secagg_mod` hands exactly those (train messages carrying
Flower's ``secaggplus_configs`` record) to ``secaggplus_mod`` and passes every other message through, so
one deployment ClientApp serves plain and secure jobs. Only the third stage trains: ``secaggplus_mod``
then calls the ClientApp through a bridge, because Flower's mod speaks the legacy ``FitIns`` / ``FitRes``
records while the ClientApp speaks fedge's (:mod:`fedge_protocol.federation`):

* in: ``fitins.parameters`` (unnamed arrays, in the order of the config's ``array-names``) and
  ``fitins.config`` become the ``arrays`` ArrayRecord and the ``config`` ConfigRecord;
* out: the reply's ``arrays`` (in that order) and ``metrics`` become ``fitres.*`` (weight:
  ``num-examples``); the mod then quantises, masks and sends only the masked vector, clearing the arrays.

Local DP composes: the ClientApp trains with DP-SGD (and pays from the ledger) before anything is masked.
A budget refusal (or any error reply of the ClientApp) is returned as that error, so the server counts
it as usual and, for SecAgg+, as a dropout after the key exchange (its masks are rebuilt from shares).
The round's SecAgg+ state (key pairs, shares) stays in the node's ``Context.state`` between messages.
The metrics (loss, accuracy, ``num-examples``, epsilon) travel in clear, as in Flower's workflow.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fedge_protocol.federation import ARRAYS, CONFIG, METRICS, ReplyKey, TrainKey

__all__ = ["is_secagg_message", "secagg_mod"]

Handler = Callable[[Message, Context], Message]
FITINS_PARAMETERS = "fitins.parameters"
FITINS_CONFIG = "fitins.config"


class _ErrorReply(Exception):
    """The ClientApp answered with an error (a budget refusal): returned as is, not as a crash."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.reason)
        self.error = error


def is_secagg_message(msg: Message) -> bool:
    """A train message of Flower's SecAgg+ workflow (it carries the ``secaggplus_configs`` record)."""
    return msg.metadata.message_type == MessageType.TRAIN and (
        not msg.has_error() and RECORD_KEY_CONFIGS in msg.content.config_records
    )


def _bridge(call_next: Handler) -> Handler:
    """Legacy ``fitins`` in, fedge's train message to the ClientApp, its reply back as ``fitres``."""

    def call(msg: Message, context: Context) -> Message:
        content = msg.content
        if FITINS_PARAMETERS not in content.array_records or FITINS_CONFIG not in content.config_records:
            raise ValueError("a SecAgg+ training message without fitins.parameters / fitins.config")
        legacy = content.config_records[FITINS_CONFIG]
        names = json.loads(str(legacy[TrainKey.ARRAY_NAMES]))
        blobs = list(content.array_records[FITINS_PARAMETERS].values())
        if not isinstance(names, list) or len(names) != len(blobs):
            raise ValueError(
                f"{TrainKey.ARRAY_NAMES} names {len(names)} arrays, the message holds {len(blobs)}"
            )
        arrays = ArrayRecord(
            {str(n): Array(bytes_to_ndarray(b.data)) for n, b in zip(names, blobs, strict=True)}
        )
        config = ConfigRecord({k: v for k, v in legacy.items() if k != TrainKey.ARRAY_NAMES})
        content = RecordDict({ARRAYS: arrays, CONFIG: config})
        train = Message(content, metadata=msg.metadata)  # type: ignore[call-overload]  # same message
        reply = call_next(train, context)
        if reply.has_error():
            raise _ErrorReply(reply.error)
        out, metrics = reply.content.array_records[ARRAYS], reply.content.metric_records[METRICS]
        fitres = FitRes(
            status=Status(Code.OK, "Success"),
            parameters=ndarrays_to_parameters([out[str(n)].numpy() for n in names]),
            num_examples=int(metrics[ReplyKey.NUM_EXAMPLES]),  # type: ignore[arg-type]
            metrics=dict(metrics),  # type: ignore[arg-type]
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)

    return call


def secagg_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """A Flower ClientApp mod: SecAgg+ train messages through Flower's ``secaggplus_mod`` (training
    through :func:`_bridge`); every other message straight to ``call_next``."""
    if not is_secagg_message(msg):
        return call_next(msg, context)
    try:
        return secaggplus_mod(msg, context, _bridge(call_next))
    except _ErrorReply as refused:
        return Message(refused.error, reply_to=msg)
