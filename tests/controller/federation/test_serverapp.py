"""The ServerApp's guard without a runtime: malformed replies out by node id, budget refusals recognised
and not asked again, metric keys harmonised, reports handed over (list and HTTP), run config checked."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from controller.federation.serverapp import (
    FederationConfig,
    GuardedStrategy,
    HttpReporter,
    ListReporter,
    RoundReport,
    save_arrays,
)
from controller.federation.strategies import build_strategy
from fedge_protocol.federation import BUDGET_EXCEEDED_CODE, budget_refusal_reason


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set when Flower's strategies build their messages."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


GLOBAL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


class FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _metadata(node: int, kind: str) -> Metadata:
    return Metadata(
        run_id=1,
        message_id=f"r{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="1",
        created_at=time.time(),
        ttl=60,
        message_type=kind,
    )


def _reply(node: int, arrays: dict[str, np.ndarray] | None = None, **metrics: float) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": 10, "train_loss": 0.5, **metrics})})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content, metadata=_metadata(node, MessageType.TRAIN))


def _refusal(node: int) -> Message:
    return Message(
        Error(BUDGET_EXCEEDED_CODE, budget_refusal_reason("spent 3 > budget 3")),
        metadata=_metadata(node, MessageType.TRAIN),
    )


def _guard(reporter: ListReporter) -> GuardedStrategy:
    inner = build_strategy("fedavg", min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2)
    return GuardedStrategy(inner, reporter, run_id=1, job_id="job-1")


def _configure(guard: GuardedStrategy, nodes: list[int]) -> list[Message]:
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    return list(guard.configure_train(1, arrays, ConfigRecord(), FakeGrid(nodes)))  # type: ignore[arg-type]


def test_malformed_replies_are_left_out_and_reported_with_their_node_id() -> None:
    reporter = ListReporter()
    guard = _guard(reporter)
    _configure(guard, [1, 2, 3, 4, 5])
    good = {k: np.ones_like(v) for k, v in GLOBAL.items()}
    replies = [
        _reply(1, good),
        _reply(2, {"w": np.ones((3, 2), dtype=np.float32), "b": good["b"]}),  # wrong shape
        _reply(3, {"w": np.full((2, 3), np.nan, dtype=np.float32), "b": good["b"]}),  # NaN
        _reply(4, {"w": good["w"]}),  # missing array
        _reply(5, {k: v.astype(np.float64) for k, v in good.items()}),  # wrong dtype
    ]

    arrays, metrics = guard.aggregate_train(1, replies)

    assert arrays is not None and metrics is not None
    np.testing.assert_array_equal(arrays["w"].numpy(), good["w"])  # only node 1 was averaged
    (report,) = reporter.rounds
    assert (report.participants, report.failures) == (1, 0)
    reasons = {r["node_id"]: r["reason"] for r in report.rejected}
    assert set(reasons) == {2, 3, 4, 5}
    assert "w: shape (3, 2)" in reasons[2] and "NaN" in reasons[3] and "missing ['b']" in reasons[4]
    assert "float64" in reasons[5]
    assert report.bytes_sent > 0 and report.bytes_received > 0
    assert json.loads(json.dumps(report.to_json()))["type"] == "round"


def test_a_budget_refusal_is_counted_apart_and_the_device_is_not_asked_again() -> None:
    reporter = ListReporter()
    guard = _guard(reporter)
    _configure(guard, [1, 2, 3])
    good = {k: np.ones_like(v) for k, v in GLOBAL.items()}
    crashed = Message(Error(2, "ClientApp raised"), metadata=_metadata(3, MessageType.TRAIN))

    guard.aggregate_train(1, [_reply(1, good, **{"dp-epsilon": 1.5}), _refusal(2), crashed])
    asked = _configure(guard, [1, 2, 3])

    (report,) = reporter.rounds
    assert report.budget_refused == [2] and report.failures == 1 and report.participants == 1
    assert report.metrics["dp-epsilon-max"] == 1.5
    assert sorted(m.metadata.dst_node_id for m in asked) == [1, 3]


def test_differing_metric_keys_are_narrowed_to_the_common_ones() -> None:
    reporter = ListReporter()
    guard = _guard(reporter)
    _configure(guard, [1, 2])
    good = {k: np.ones_like(v) for k, v in GLOBAL.items()}

    _, metrics = guard.aggregate_train(1, [_reply(1, good, extra=1.0), _reply(2, good)])

    assert metrics is not None and set(metrics) == {"train_loss"}


def test_the_http_reporter_posts_json_with_the_token_and_survives_a_down_controller() -> None:
    seen: list[tuple[str, dict[str, object]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["authorization"], json.loads(request.content)))
        return httpx.Response(204)

    report = RoundReport(1, "job-1", "train", 1, {"train_loss": 0.5}, 2, 0, [], [], 10, 20, 0.1)
    HttpReporter("http://127.0.0.1:9/fl", token="t0k", transport=httpx.MockTransport(handler)).on_round(
        report
    )
    assert seen == [("Bearer t0k", {**report.to_json()})]

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    HttpReporter("http://127.0.0.1:9/fl", retries=2, transport=httpx.MockTransport(down)).on_round(report)


def test_the_run_config_is_checked_before_anything_starts() -> None:
    config = FederationConfig.from_run_config({"num-server-rounds": "4", "lr": 1})
    assert (config["num-server-rounds"], config["lr"]) == (4, 1.0)
    train = config.train_config("job-9")
    assert (train["job-id"], train["planned-rounds"], train["model"]) == ("job-9", 4, "digits-mlp")
    with pytest.raises(ValueError, match="unknown run config key: learning-rate"):
        FederationConfig.from_run_config({"learning-rate": 0.1})
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'"):
        FederationConfig.from_run_config({"strategy": "fedsgd"})
    with pytest.raises(ValueError, match="'lr': 'fast' is not a float"):
        FederationConfig.from_run_config({"lr": "fast"})


def test_final_parameters_are_saved_whole(tmp_path: Path) -> None:
    path = tmp_path / "out" / "final.npz"
    save_arrays(ArrayRecord({k: Array(v + 1) for k, v in GLOBAL.items()}), path)
    with np.load(path) as saved:
        assert {k: saved[k].tolist() for k in saved.files} == {k: (v + 1).tolist() for k, v in GLOBAL.items()}
    assert [p.name for p in path.parent.iterdir()] == ["final.npz"]
