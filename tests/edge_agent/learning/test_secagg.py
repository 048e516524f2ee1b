"""The device's SecAgg+ mod: only Flower's SecAgg+ train messages go to ``secaggplus_mod``; every other
message reaches the ClientApp unchanged, so one deployment ClientApp serves plain and secure jobs. (The
whole protocol against the real ClientApp runs in tests/controller/federation/test_secagg.py.)"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Error, Message, Metadata, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from edge_agent.learning.secagg import is_secagg_message, secagg_mod
from fedge_protocol.federation import CONFIG


def _message(kind: str, content: RecordDict) -> Message:
    meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id="1", created_at=0.0, ttl=60.0, message_type=kind)  # fmt: skip
    return Message(content, metadata=meta)  # type: ignore[call-overload]


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_plain_train_and_evaluate_messages_pass_straight_through() -> None:
    seen: list[Message] = []

    def app(msg: Message, ctx: Context) -> Message:
        seen.append(msg)
        return Message(RecordDict(), reply_to=msg)

    for kind in ("train", "evaluate", "query"):
        msg = _message(kind, RecordDict({CONFIG: ConfigRecord({"server-round": 1})}))
        assert not is_secagg_message(msg)
        secagg_mod(msg, _context(), app)
        assert seen[-1] is msg
    assert len(seen) == 3


def test_a_secagg_setup_message_is_answered_by_flowers_mod_with_two_public_keys() -> None:
    def app(msg: Message, ctx: Context) -> Message:  # the setup stage never trains
        raise AssertionError("the ClientApp ran during setup")

    setup = ConfigRecord({Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 3, Key.SHARE_NUMBER: 3, Key.THRESHOLD: 2,
                          Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32,
                          Key.MAX_WEIGHT: 1000.0})  # fmt: skip
    msg = _message("train", RecordDict({RECORD_KEY_CONFIGS: setup}))
    assert is_secagg_message(msg)
    context = _context()
    reply = secagg_mod(msg, context, app)
    keys = reply.content.config_records[RECORD_KEY_CONFIGS]
    assert isinstance(keys[Key.PUBLIC_KEY_1], bytes) and keys[Key.PUBLIC_KEY_1] != keys[Key.PUBLIC_KEY_2]
    assert "secaggplus_state" in context.state.config_records  # kept for the next stage


def test_an_error_message_is_not_taken_for_a_secagg_one() -> None:
    meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id="1", created_at=0.0, ttl=60.0, message_type="train")  # fmt: skip
    assert not is_secagg_message(Message(Error(3, "x"), metadata=meta))  # type: ignore[call-overload]
