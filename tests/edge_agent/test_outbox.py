"""The agent's persistent outbox: order, delete-after-delivery, restart survival, growing sequences."""

from __future__ import annotations

from pathlib import Path

from edge_agent.link.outbox import Entry, Outbox


def test_entries_are_delivered_in_order_and_deleted_only_after_delivery(tmp_path: Path) -> None:
    box = Outbox.in_state_dir(tmp_path)
    seqs = [box.append("telemetry", {"n": i}) for i in range(3)]
    sent: list[int] = []

    def flaky(entry: Entry) -> bool:  # the link drops after the first entry
        if sent:
            return False
        sent.append(entry.seq)
        return True

    assert box.deliver(flaky) == 1
    assert [e.seq for e in box.pending()] == seqs[1:]
    assert box.deliver(lambda e: sent.append(e.seq) is None) == 2
    assert sent == seqs
    assert len(box) == 0


def test_outbox_survives_a_restart_and_sequences_keep_growing(tmp_path: Path) -> None:
    box = Outbox.in_state_dir(tmp_path)
    first = box.append("state", {"state": "applying"})
    second = box.append("state", {"state": "succeeded"})
    box.ack(second)
    box.close()

    reopened = Outbox.in_state_dir(tmp_path)
    third = reopened.append("telemetry", {"temp": 1})

    assert [(e.seq, e.kind, e.body) for e in reopened.pending()] == [
        (first, "state", {"state": "applying"}),
        (third, "telemetry", {"temp": 1}),
    ]
    assert third > second  # never reused, even after the last entry was deleted
    reopened.close()
