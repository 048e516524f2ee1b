"""Deployments as operators manage them: listed (paginated, filtered), cancelled (with or without rolling
back installed devices), and ``superseded`` when a newer deployment took every target before anything was
installed. Devices here are enrolled identities that report over the real HTTP status route."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.db.models import Device as DeviceRow
from edge_agent.identity import DeviceIdentity, enroll
from fedge_protocol import paths
from tests.conftest import LiveServer, fedge_cli
from tests.e2e.helpers import ADMIN, add_model, deploy, enrollment_token, upload_onnx


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        yield client


def _devices(live: LiveServer, http: httpx.Client, tmp_path: Path, n: int) -> list[DeviceIdentity]:
    return [
        enroll(live.url, enrollment_token(http, {"site": "lab"}), tmp_path / f"d{i}", facts={"cpu_count": 1})
        for i in range(n)
    ]


def _desired(live: LiveServer, device: DeviceIdentity) -> dict[str, object]:
    """The device's desired state as the controller holds it (what its next poll is signed from)."""
    with live.state.sessions() as s:
        row = s.get(DeviceRow, device.device_id)
        assert row is not None
        return dict(row.desired or {})


def _report(http: httpx.Client, device: DeviceIdentity, deployment_id: str, state: str) -> None:
    r = http.post(
        paths.STATUS.format(device_id=device.device_id),
        headers={"Authorization": f"Bearer {device.sign_jwt()}"},
        json={"state": state, "deployment_id": deployment_id},
    )
    assert r.status_code in (200, 202, 204), r.text


def _get(http: httpx.Client, deployment_id: str) -> dict[str, object]:
    r = http.get(f"/v1/deployments/{deployment_id}", headers=ADMIN)
    assert r.status_code == 200
    return dict(r.json())


def _targets(dep: dict[str, object]) -> dict[str, str]:
    return {t["device_id"]: t["state"] for t in dep["devices"]}  # type: ignore[attr-defined]


def test_list_is_paginated_newest_first_and_filters(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    (dev,) = _devices(live, http, tmp_path, 1)
    model_a, va = upload_onnx(http, add_model(1.0))
    model_b, vb = upload_onnx(http, add_model(2.0))
    first = deploy(http, model_a, va, [dev.device_id])
    second = deploy(http, model_b, vb, [dev.device_id])
    third = deploy(http, model_a, va, [dev.device_id])
    page = http.get("/v1/deployments", headers=ADMIN).json()
    assert set(page) == {"items", "total", "limit", "offset"} and page["total"] == 3
    assert [d["id"] for d in page["items"]] == [third, second, first]
    newest = page["items"][0]
    assert newest["state"] == "rolling" and newest["devices"] == {"pending": 1} and newest["waves"] == 1
    assert (
        http.get("/v1/deployments", params={"limit": 1, "offset": 1}, headers=ADMIN).json()["items"][0]["id"]
        == second
    )
    only_a = http.get("/v1/deployments", params={"model_id": model_a}, headers=ADMIN).json()
    assert {d["id"] for d in only_a["items"]} == {first, third}
    superseded = http.get("/v1/deployments", params={"state": "superseded"}, headers=ADMIN).json()
    assert {d["id"] for d in superseded["items"]} == {first, second}
    bad = http.get("/v1/deployments", params={"state": "nonsense"}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["field"] == "query.state"
    dev_token = {"Authorization": f"Bearer {dev.sign_jwt()}"}
    assert http.get("/v1/deployments", headers=dev_token).status_code == 403


def test_superseded_before_install_is_not_succeeded(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    a, b = _devices(live, http, tmp_path, 2)
    model, version = upload_onnx(http, add_model(1.0))
    old = deploy(http, model, version, [a.device_id, b.device_id])
    new = deploy(http, model, version, [a.device_id, b.device_id])
    assert _get(http, old)["state"] == "superseded"
    assert set(_targets(_get(http, old)).values()) == {"superseded"}
    # one device installed the older one before the newer came: the older did install somewhere
    partly = deploy(http, model, version, [a.device_id, b.device_id])
    _report(http, a, partly, "succeeded")
    deploy(http, model, version, [b.device_id])
    assert _get(http, partly)["state"] == "succeeded"
    assert _get(http, new)["state"] == "superseded"


def test_cancel_keeps_installed_devices_and_reverts_the_rest(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    a, b, c = _devices(live, http, tmp_path, 3)
    model, v1 = upload_onnx(http, add_model(1.0))
    base = deploy(http, model, v1, [a.device_id, b.device_id, c.device_id])
    for d in (a, b, c):
        _report(http, d, base, "succeeded")
    assert _get(http, base)["state"] == "succeeded"
    _, v2 = upload_onnx(http, add_model(2.0), model)
    # three waves of one device each: a installs v2, b is asked to, c is not reached yet
    dep = deploy(
        http, model, v2, [a.device_id, b.device_id, c.device_id], strategy={"waves": [0.3, 0.6, 1.0]}
    )
    _report(http, a, dep, "succeeded")
    assert _targets(_get(http, dep)) == {
        a.device_id: "succeeded",
        b.device_id: "pending",
        c.device_id: "waiting",
    }
    assert _desired(live, b)["version"] == v2
    r = http.post(f"/v1/deployments/{dep}/cancel", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "cancelled" and body["finished_at"]
    assert _targets(body) == {a.device_id: "succeeded", b.device_id: "cancelled", c.device_id: "cancelled"}
    assert _desired(live, a)["version"] == v2  # installed: kept
    assert _desired(live, b)["version"] == v1  # asked, not done: its previous model back
    assert _desired(live, c)["version"] == v1  # never reached
    listed = http.get("/v1/deployments", params={"state": "cancelled"}, headers=ADMIN).json()
    assert [d["id"] for d in listed["items"]] == [dep]
    late = http.post(f"/v1/deployments/{dep}/cancel", headers=ADMIN)
    assert late.status_code == 409 and "not rolling" in late.json()["detail"]
    assert http.post("/v1/deployments/nope/cancel", headers=ADMIN).status_code == 404


def test_cancel_with_rollback_reverts_installed_devices(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    a, b = _devices(live, http, tmp_path, 2)
    model, v1 = upload_onnx(http, add_model(1.0))
    base = deploy(http, model, v1, [a.device_id, b.device_id])
    for d in (a, b):
        _report(http, d, base, "succeeded")
    _, v2 = upload_onnx(http, add_model(2.0), model)
    dep = deploy(http, model, v2, [a.device_id, b.device_id])
    _report(http, a, dep, "succeeded")  # a installed v2, b still pending
    keep = http.post(f"/v1/deployments/{dep}/cancel", headers=ADMIN, json={"rollback": True})
    assert keep.status_code == 200, keep.text
    assert _targets(keep.json()) == {a.device_id: "rolled-back", b.device_id: "cancelled"}
    assert _desired(live, a)["version"] == v1 and _desired(live, b)["version"] == v1


def test_cli_lists_shows_cancels_and_watches(live: LiveServer, http: httpx.Client, tmp_path: Path) -> None:
    a, b = _devices(live, http, tmp_path, 2)
    model, version = upload_onnx(http, add_model(1.0))
    dep = deploy(http, model, version, [a.device_id, b.device_id], strategy={"waves": [0.5, 1.0]})
    listed = fedge_cli(live, "deployments", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [d["id"] for d in json.loads(listed.stdout)["items"]] == [dep]
    table = fedge_cli(live, "deployments", "list")
    assert dep[:8] in table.stdout and "1 pending, 1 waiting" in table.stdout
    shown = fedge_cli(live, "deployments", "show", dep)
    assert shown.returncode == 0 and a.device_id in shown.stdout and "pending" in shown.stdout
    cancelled = fedge_cli(live, "deployments", "cancel", dep, "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    again = fedge_cli(live, "deployments", "cancel", dep)
    assert again.returncode == 1 and "not rolling" in again.stderr and "Traceback" not in again.stderr
    watched = fedge_cli(live, "deployments", "watch", dep)  # settled already: one table, exit 0
    assert watched.returncode == 0 and "cancelled" in watched.stdout


def test_a_device_that_never_answers_times_out_and_fails_its_wave(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    a, b = _devices(live, http, tmp_path, 2)
    model, v1 = upload_onnx(http, add_model(1.0))
    base = deploy(http, model, v1, [a.device_id, b.device_id])
    for d in (a, b):
        _report(http, d, base, "succeeded")
    _, v2 = upload_onnx(http, add_model(2.0), model)
    dep = deploy(
        http, model, v2, [a.device_id, b.device_id], device_timeout_seconds=60, max_failure_ratio=0.5
    )
    _report(http, a, dep, "succeeded")
    rollouts = live.state.rollouts
    assert rollouts.sweep() == 0  # b is pending but not yet past its 60 s
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    assert rollouts.sweep(now=later) == 1
    body = _get(http, dep)
    assert _targets(body) == {a.device_id: "succeeded", b.device_id: "timed-out"}
    assert body["state"] == "succeeded"  # 1 of 2 failed: within max_failure_ratio 0.5
    (t,) = [t for t in body["devices"] if t["device_id"] == b.device_id]  # type: ignore[attr-defined]
    assert "within 60 s" in t["error"]
    # with no tolerance the timed-out device fails the rollout and everyone is rolled back
    _, v3 = upload_onnx(http, add_model(3.0), model)
    strict = deploy(http, model, v3, [a.device_id, b.device_id], device_timeout_seconds=60)
    _report(http, a, strict, "succeeded")
    assert rollouts.sweep(now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)) == 1
    body = _get(http, strict)
    assert body["state"] == "failed" and "1 of 2" in str(body["error"])
    assert _desired(live, a)["version"] == v2 and _desired(live, b)["version"] == v2


def test_continuous_deployment_reaches_devices_enrolling_later(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    model, version = upload_onnx(http, add_model(1.0))
    r = http.post(
        "/v1/deployments",
        headers=ADMIN,
        json={"model_id": model, "version": version, "selector": {"site": "lab"}, "continuous": True},
    )
    assert r.status_code == 201, r.text  # no device yet: a continuous deployment may start empty
    dep = r.json()["deployment_id"]
    assert _get(http, dep)["state"] == "succeeded" and _get(http, dep)["continuous"] is True
    (late,) = _devices(live, http, tmp_path, 1)  # enrols with site=lab
    assert _desired(live, late) == {"model_id": model, "version": version, "deployment_id": dep}
    assert _targets(_get(http, dep)) == {late.device_id: "pending"}
    _report(http, late, dep, "succeeded")
    assert _targets(_get(http, dep)) == {late.device_id: "succeeded"}
    other = enroll(
        live.url, enrollment_token(http, {"site": "plant"}), tmp_path / "other", facts={"cpu_count": 1}
    )
    assert _desired(live, other) == {}
    newer = http.post(
        "/v1/deployments",
        headers=ADMIN,
        json={"model_id": model, "version": version, "selector": {"site": "lab"}, "continuous": True},
    ).json()["deployment_id"]
    (after,) = _devices(live, http, tmp_path / "after", 1)
    assert _desired(live, after)["deployment_id"] == newer  # the newest continuous deployment wins
    # cancelled (settled, but continuous: cancelling stops it): later devices no longer join
    for d in (dep, newer):
        r = http.post(f"/v1/deployments/{d}/cancel", headers=ADMIN)
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
    (last,) = _devices(live, http, tmp_path / "last", 1)
    assert _desired(live, last) == {}
    assert _desired(live, late)["version"] == version  # installed before the cancel: kept
    no_selector = http.post(
        "/v1/deployments",
        headers=ADMIN,
        json={"model_id": model, "version": version, "device_ids": [late.device_id], "continuous": True},
    )
    assert no_selector.status_code == 422 and no_selector.json()["field"] == "continuous"


def test_cli_accepts_the_short_ids_its_tables_show(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    (a,) = _devices(live, http, tmp_path, 1)
    model, version = upload_onnx(http, add_model(1.0))
    dep = deploy(http, model, version, [a.device_id])
    shown = fedge_cli(live, "deployments", "show", dep[:8], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == dep
    missing = fedge_cli(live, "deployments", "show", "zzzzzzzz")
    assert missing.returncode == 1 and "no deployment id starts with" in missing.stderr
    status = fedge_cli(live, "models", "status", model[:8])  # the jobs/deployments tables show 8
    assert status.returncode == 0 and model in status.stdout, status.stderr
    assert fedge_cli(live, "models", "status", "zzzzzzzz").returncode == 1
    dataset = http.get(f"/v1/models/{model}/metadata", headers=ADMIN).json()["data_params"]["dataset_id"]
    got = fedge_cli(live, "datasets", "get", dataset[:8], "--json")  # the models table shows 8
    assert got.returncode == 0 and dataset in got.stdout, got.stderr


def test_deploy_watch_shows_the_waves_until_it_settles(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys
    import time

    (a,) = _devices(live, http, tmp_path, 1)
    model, version = upload_onnx(http, add_model(1.0))
    env = {
        **os.environ,
        "FEDGE_URL": live.url,
        "FEDGE_TOKEN": ADMIN["Authorization"].split()[1],
        "COLUMNS": "200",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.user_cli", "deploy", model, "--version", str(version),
         "--device", a.device_id, "--watch"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (page := http.get("/v1/deployments", headers=ADMIN).json())["items"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.5)  # the watcher is showing the rolling table
        _report(http, a, page["items"][0]["id"], "succeeded")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "wave" in err and "succeeded" in out and "Traceback" not in err


def test_concurrent_status_reports_share_a_commit_and_a_bad_one_fails_alone(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    import threading

    from sqlalchemy import event

    from controller.errors import NotFound

    devices = _devices(live, http, tmp_path, 4)
    model, v1 = upload_onnx(http, add_model(1.0))
    dep = deploy(http, model, v1, [d.device_id for d in devices])
    rollouts = live.state.rollouts
    engine = live.state.engine
    commits: list[threading.Thread] = []  # the committing threads (the live server commits too)
    listener = lambda _conn: commits.append(threading.current_thread())  # noqa: E731
    results: dict[str, str] = {}

    def report(device_id: str) -> None:
        try:
            rollouts.report(device_id, {"state": "succeeded", "deployment_id": dep})
            results[device_id] = "ok"
        except NotFound:
            results[device_id] = "404"

    callers = [d.device_id for d in devices] + ["no-such-device"]
    threads = [threading.Thread(target=report, args=(c,)) for c in callers]
    event.listen(engine, "commit", listener)
    try:
        with rollouts._writer:  # a transaction in progress: the five reports queue behind it
            for t in threads:
                t.start()
            while len(rollouts._queued) < len(callers):
                threading.Event().wait(0.01)
        for t in threads:
            t.join(30)
    finally:
        event.remove(engine, "commit", listener)
    assert results == {**{d.device_id: "ok" for d in devices}, "no-such-device": "404"}
    # the batch of five failed on the unknown device, then each was written alone: the four went through
    assert _get(http, dep)["state"] == "succeeded"
    assert set(_targets(_get(http, dep)).values()) == {"succeeded"}

    # without a bad one, reports queued together are one commit
    _, v2 = upload_onnx(http, add_model(2.0), model)
    dep = dep2 = deploy(http, model, v2, [d.device_id for d in devices])
    results.clear()
    threads = [threading.Thread(target=report, args=(d.device_id,)) for d in devices]
    event.listen(engine, "commit", listener)
    try:
        with rollouts._writer:
            for t in threads:
                t.start()
            while len(rollouts._queued) < len(devices):
                threading.Event().wait(0.01)
        for t in threads:
            t.join(30)
    finally:
        event.remove(engine, "commit", listener)
    assert results == {d.device_id: "ok" for d in devices}
    assert len([t for t in commits if t in threads]) == 1
    assert _get(http, dep2)["state"] == "succeeded"
