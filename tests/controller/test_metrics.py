"""GET /metrics: Prometheus exposition of the controller (docs/metrics.md) from a real app: HTTP counters by
route template and status, body bytes, chain transactions, database state gauges, MQTT and reconciliation
hooks, and the optional bearer token."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from controller.app import create_app
from controller.chain.base import ChainBackend
from controller.db.models import Dataset
from controller.observability.events import (
    MQTT_PUBLISHED,
    MQTT_RECEIVED,
    counted_publish,
    counted_receive,
    topic_leaf,
)
from controller.state import build_state
from fedge_protocol.topics import Leaf, device_topic
from tests.conftest import ADMIN_TOKEN, Api, SettingsFactory

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(api: Api) -> Samples:
    r = api.client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_template_method_and_status(api: Api) -> None:
    before = _scrape(api)
    r = api.push_dataset(b"digits" * 100)
    assert r.status_code == 201, r.text
    model = api.register_model(r.json()["dataset_id"], name="cnn")
    assert model.status_code == 201, model.text
    model_id = model.json()["model_id"]
    assert api.client.get(f"/v1/models/{model_id}/metadata", headers=api.admin).status_code == 200
    missing = api.client.get("/v1/models/00000000-0000-0000-0000-000000000000/metadata", headers=api.admin)
    assert missing.status_code == 404
    assert api.client.get("/v1/models").status_code == 401  # no credential
    assert api.client.get("/no/such/path").status_code == 404
    after = _scrape(api)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    requests = "fedge_controller_http_requests_total"
    assert moved(requests, route="/v1/datasets", method="POST", status="201") == 1
    assert moved(requests, route="/v1/models", method="POST", status="201") == 1
    # the template, never the raw path: both ids land on one series, split by status
    assert moved(requests, route="/v1/models/{model_id}/metadata", method="GET", status="200") == 1
    assert moved(requests, route="/v1/models/{model_id}/metadata", method="GET", status="404") == 1
    assert moved(requests, route="/v1/models", method="GET", status="401") == 1
    assert moved(requests, route="unmatched", method="GET", status="404") == 1
    assert not [k for k in after if k[0] == requests and any(model_id in v for _, v in k[1])]
    assert (
        moved("fedge_controller_http_request_duration_seconds_count", route="/v1/models", method="POST") == 1
    )
    assert moved("fedge_controller_upload_bytes_total", route="/v1/datasets") >= 600  # the multipart body
    assert moved("fedge_controller_download_bytes_total", route="/v1/models/{model_id}/metadata") > 0
    # the dataset's and the model's chain records: two successful transactions, timed
    assert moved("fedge_controller_chain_tx_seconds_count", outcome="ok") >= 2
    assert _value(after, "fedge_controller_db_scrape_ok") == 1
    assert _value(after, "fedge_controller_devices_online") == 0
    assert _value(after, "fedge_controller_jobs", state="queued") == _value(
        before, "fedge_controller_jobs", state="queued"
    )


def test_reconciliation_removals_are_counted(api: Api) -> None:
    before = _value(_scrape(api), "fedge_controller_reconcile_removed_total", kind="pending_datasets")
    # a dataset row left pending (a crash between row and upload) is what reconciliation removes
    with api.state.sessions.begin() as s:
        s.add(
            Dataset(status="pending", bucket=api.state.registry.buckets.datasets, object_key="never-written")
        )
    removed = api.state.registry.reconcile(0)
    assert removed["pending_datasets"] == 1
    after = _value(_scrape(api), "fedge_controller_reconcile_removed_total", kind="pending_datasets")
    assert after - before == 1


def test_mqtt_messages_are_counted_by_topic_leaf_not_raw_topic() -> None:
    class Client:
        @counted_publish
        def publish(self, topic: str, payload: bytes) -> bool:
            return topic.endswith(Leaf.DESIRED)

        @counted_receive
        def on_message(self, topic: str, payload: bytes) -> None:
            self.got = (topic, payload)

    sent_ok = MQTT_PUBLISHED.labels("desired", "ok")._value.get()
    sent_failed = MQTT_PUBLISHED.labels("cmd", "failed")._value.get()
    got = MQTT_RECEIVED.labels("state")._value.get()
    client = Client()
    assert client.publish(device_topic("dev-1", Leaf.DESIRED), b"{}")
    assert not client.publish(device_topic("dev-1", Leaf.CMD), b"{}")
    client.on_message(device_topic("dev-2", Leaf.STATE), b"{}")
    assert client.got == ("fedge/devices/dev-2/state", b"{}")
    assert MQTT_PUBLISHED.labels("desired", "ok")._value.get() == sent_ok + 1
    assert MQTT_PUBLISHED.labels("cmd", "failed")._value.get() == sent_failed + 1
    assert MQTT_RECEIVED.labels("state")._value.get() == got + 1
    assert topic_leaf("fedge/devices/dev-1/bogus") == "other"
    assert topic_leaf("somewhere/else") == "other"


def test_metrics_token_protects_the_endpoint(
    make_settings: SettingsFactory, shared_evm: ChainBackend
) -> None:
    state = build_state(make_settings(metrics_token="scrape-secret-0123"), shared_evm)
    try:
        with TestClient(create_app(state)) as client:
            refused = client.get("/metrics")
            assert refused.status_code == 401
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert client.get("/metrics", headers=admin).status_code == 401  # not the admin token
            ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-0123"})
            assert ok.status_code == 200
            assert "fedge_controller_http_requests_total" in ok.text
            assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    finally:
        state.close()


def test_chain_transaction_failures_are_counted_by_error_class() -> None:
    from controller.chain.errors import ChainUnavailable
    from controller.observability.events import CHAIN_TX_FAILURES, CHAIN_TX_SECONDS, timed_chain_tx

    @timed_chain_tx
    def transact(fail: bool) -> str:
        if fail:
            raise ChainUnavailable("node down")
        return "receipt"

    failures = CHAIN_TX_FAILURES.labels("ChainUnavailable")._value.get()
    failed = CHAIN_TX_SECONDS.labels("failed")._sum.get()
    assert transact(False) == "receipt"
    with pytest.raises(ChainUnavailable):
        transact(True)
    assert CHAIN_TX_FAILURES.labels("ChainUnavailable")._value.get() == failures + 1
    assert CHAIN_TX_SECONDS.labels("failed")._sum.get() > failed
