"""The loopback federation's bookkeeping (simulator/fl/loopback.py) on recorded input: a SuperNode's log
becomes one trace per message (rounds counted from the train messages when Flower logs no group id), and
the timeline splits every phase into the SuperNode's part, the ClientApp process and the polling."""

from __future__ import annotations

import pytest

from simulator.fl.loopback import LoopbackOutcome, ProcessSpan, parse_supernode_log, timeline

GREEN, RESET = "\x1b[92m", "\x1b[0m"


def _log(*lines: tuple[float, str]) -> list[tuple[float, str]]:
    return [(t, f"{GREEN}INFO {RESET}:      {text}") for t, text in lines]


def _message(t: float, kind: str, start: float, reply: float) -> list[tuple[float, str]]:
    return _log(
        (t, "[RUN 42]"),
        (t, f"Receiving: {kind} message (ID: ab12)"),
        (t + 0.1, "Received successfully"),
        (start, "Start `flwr-clientapp` process"),
        (reply, f"Sending: {kind} message (ID: cd34)"),
        (reply + 0.1, "Sent successfully"),
    )


def test_a_supernode_log_becomes_one_trace_per_message_with_rounds_counted_from_train() -> None:
    lines = [
        *_log((0.0, "Starting Flower SuperNode"), (0.5, "SuperNode ID: 7")),
        *_message(10.0, "train", 12.0, 15.0),
        (13.0, "Successfully installed fedge-federation to /tmp/x"),  # a ClientApp's own output
        *_message(20.0, "evaluate", 21.0, 23.0),
        *_message(30.0, "train", 31.5, 34.0),
    ]
    traces = parse_supernode_log(2, lines)
    assert [(t.device, t.round, t.kind) for t in traces] == [
        (2, 1, "train"),
        (2, 1, "evaluate"),
        (2, 2, "train"),
    ]
    first = traces[0]
    assert (first.receiving, first.received, first.clientapp_log, first.sending, first.sent) == (
        10.0, 10.1, 12.0, 15.0, 15.1,
    )  # fmt: skip


def test_a_logged_round_wins_over_the_count() -> None:
    lines = _log((1.0, "[RUN 42, ROUND 7]"), (1.0, "Receiving: train message (ID: 1)"))
    assert [(t.round, t.kind, t.received) for t in parse_supernode_log(0, lines)] == [(7, "train", None)]


def test_the_timeline_splits_each_phase_and_takes_medians_after_round_one() -> None:
    lines: dict[int, list[tuple[float, str]]] = {0: [], 1: []}
    spans, reports = [], []
    for rnd in (1, 2, 3):
        base = 100.0 * rnd
        for device in (0, 1):
            slow = 1.0 if device == 1 else 0.0
            lines[device] += _message(base, "train", base + 1.0, base + 5.0 + slow)
            spans.append(ProcessSpan(device, 1000 * rnd + device, base + 0.6, base + 5.5 + slow))
        reports.append({"type": "round", "round": rnd, "kind": "train", "seconds": 9.0 if rnd > 1 else 20.0})
    messages = [t for device, log in lines.items() for t in parse_supernode_log(device, log)]
    spans.append(ProcessSpan(0, 9, 50.0, None))  # still running at the end: not in a phase, not counted
    outcome = LoopbackOutcome(
        state="succeeded", reason=None, reports=reports, seconds=60.0, messages=messages, clientapps=spans,
        wire={}, superlink_start_s=2.0, devices=2, model_bytes=100,
    )  # fmt: skip
    result = timeline(outcome)
    second = result["phases"][1]
    assert second["messages"] == 2
    assert second["node_s"] == pytest.approx(6.1)  # the slower device: receiving 200.0, sent 206.1
    assert second["polling_s"] == pytest.approx(9.0 - 6.1)
    assert second["pickup_s"] == pytest.approx(0.5)  # received 200.1, process 200.6
    assert second["startup_s"] == pytest.approx(0.4)  # process 200.6, first log line 201.0
    assert second["app_s"] == pytest.approx(4.5)  # median of 4.0 and 5.0
    assert second["clientapp_s"] == pytest.approx(5.4)  # median of 4.9 and 5.9
    median = result["median"]
    assert median["phase_s"] == {"train": 9.0, "evaluate": None}  # round 1 (20 s) left out
    assert median["node_s"]["train"] == pytest.approx(6.1)
    assert result["clientapp_processes"] == 7
