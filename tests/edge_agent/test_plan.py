"""The pure planner: plan(current, desired) -> steps."""

from __future__ import annotations

from edge_agent.deploy.plan import (
    Activate,
    Current,
    Desired,
    Fetch,
    HealthCheck,
    ModelRef,
    Remove,
    Verify,
    plan,
)

V1 = ModelRef("m", 1, "11" * 32)
V2 = ModelRef("m", 2, "22" * 32)
V3 = ModelRef("m", 3, "33" * 32)


def test_nothing_desired_is_a_no_op() -> None:
    assert plan(Current(active=V1, installed=frozenset({V1})), Desired(None)) == []


def test_same_version_already_active_is_a_no_op() -> None:
    assert plan(Current(active=V1, installed=frozenset({V1})), Desired(V1, "/dl/1")) == []


def test_new_model_is_fetched_verified_activated_and_checked() -> None:
    steps = plan(Current(), Desired(V1, "/dl/1", sample_input=[[0.0]]))

    assert steps == [Fetch(V1, "/dl/1"), Verify(V1), Activate(V1), HealthCheck(V1, [[0.0]])]


def test_upgrade_removes_slots_older_than_the_outgoing_one() -> None:
    current = Current(active=V2, previous=V1, installed=frozenset({V1, V2}))

    steps = plan(current, Desired(V3, "/dl/3"))

    assert steps == [Fetch(V3, "/dl/3"), Verify(V3), Activate(V3), HealthCheck(V3), Remove(V1)]


def test_rollback_to_an_installed_version_skips_the_download() -> None:
    current = Current(active=V2, previous=V1, installed=frozenset({V1, V2}))

    assert plan(current, Desired(V1, "/dl/1")) == [Verify(V1), Activate(V1), HealthCheck(V1)]


def test_a_version_that_failed_here_is_not_retried() -> None:
    current = Current(active=V1, failed=V2, installed=frozenset({V1}))

    assert plan(current, Desired(V2, "/dl/2")) == []


def test_same_version_with_another_hash_is_a_different_model() -> None:
    other = ModelRef("m", 1, "ff" * 32)

    assert plan(Current(active=V1, installed=frozenset({V1})), Desired(other, "/dl/1"))[0] == Fetch(
        other, "/dl/1"
    )


def test_desired_from_a_signed_payload() -> None:
    payload = {
        "revision": 4,
        "deployment_id": "d",
        "model": {
            "model_id": "m",
            "version": 2,
            "sha256": V2.sha256,
            "download": "/dl/2",
            "sample_input": None,
        },
    }

    assert Desired.from_payload(payload) == Desired(V2, "/dl/2", None, "d", 4)
