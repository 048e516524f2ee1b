"""Provider choice (fake provider lists: the GPU path cannot run here), slots, backoff, health check."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from edge_agent.deploy.plan import ModelRef
from edge_agent.deploy.slots import SlotStore
from edge_agent.link.client import Backoff
from edge_agent.runtime import HealthCheckFailed, ModelRuntime, health_check, select_providers
from tests.e2e.helpers import add_model, failing_model

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def test_auto_selection_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert select_providers([CPU, CUDA, TRT]) == [TRT, CUDA, CPU]
    assert select_providers([CUDA, CPU]) == [CUDA, CPU]
    assert select_providers([CPU]) == [CPU]


def test_configured_preference_keeps_its_order_and_falls_back_to_cpu() -> None:
    assert select_providers([CPU, CUDA, TRT], preferred=[CUDA]) == [CUDA, CPU]
    assert select_providers([CPU], preferred=[TRT, CUDA]) == [CPU]


def test_no_usable_provider_is_an_error() -> None:
    with pytest.raises(ValueError, match="none of"):
        select_providers(["OpenVINOExecutionProvider"], preferred=[CUDA])


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap() -> None:
    b = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    waits = [b.failure() for _ in range(6)]

    assert all(0 <= w <= min(8.0, 2.0 ** (i + 1)) for i, w in enumerate(waits))
    assert len(set(waits)) == len(waits)
    assert 0.9 <= b.success() <= 1.1
    assert b.failures == 0


def test_health_check_runs_zeros_of_the_declared_shape(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    good.write_bytes(add_model())
    bad.write_bytes(failing_model())

    health_check(good)
    with pytest.raises(HealthCheckFailed):
        health_check(bad)
    with pytest.raises(HealthCheckFailed):
        health_check(good, sample_input=[[1.0, 2.0]])  # a sample that does not fit the declared shape


def test_hot_swap_keeps_in_flight_requests_on_their_session(tmp_path: Path) -> None:
    one, two = tmp_path / "1.onnx", tmp_path / "2.onnx"
    one.write_bytes(add_model(1.0))
    two.write_bytes(add_model(2.0))
    rt = ModelRuntime()
    rt.swap("m", 1, "a", one)
    results: list[float] = []

    def call() -> None:
        for _ in range(50):
            results.append(rt.infer({"x": [[0, 0, 0, 0]]})["y"][0][0])

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    rt.swap("m", 2, "b", two)
    for t in threads:
        t.join()

    assert len(results) == 150 and set(results) <= {1.0, 2.0}
    assert rt.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[2.0, 2.0, 2.0, 2.0]]}


def test_slot_pointers_swap_and_recover(tmp_path: Path) -> None:
    slots = SlotStore(tmp_path)
    v1, v2 = ModelRef("m", 1, "a"), ModelRef("m", 2, "b")
    for ref in (v1, v2):
        staged = slots.staged_path()
        staged.write_bytes(b"x")
        slots.install(ref, staged)
    slots.activate(v1)
    slots.confirm()
    slots.activate(v2)  # crash here: current is v2, unconfirmed

    assert SlotStore(tmp_path).recover() == v2

    cur = slots.current()
    assert (cur.active, cur.failed, cur.installed) == (v1, v2, frozenset({v1, v2}))
    assert not list((tmp_path / "models").glob(".*.tmp"))
