"""The one verified fetch (deployments and grid policies) and the executor's Verify step."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import edge_agent.deploy.fetch as fetch_module
from edge_agent.deploy.executor import Executor
from edge_agent.deploy.fetch import DigestMismatch, DownloadFailed, fetch_verified
from edge_agent.deploy.plan import Desired, Fetch, ModelRef, Verify
from edge_agent.deploy.slots import SlotStore
from edge_agent.grid import GridRunError, fetch_policy
from edge_agent.link.client import DeviceRevoked, LinkError
from edge_agent.runtime.session import ModelRuntime

DATA = b"onnx bytes"
SHA = hashlib.sha256(DATA).hexdigest()


class FakeFetcher:
    """Streams fixed bytes (or fails), returning the digest of what it wrote like ControllerLink."""

    def __init__(self, data: bytes = DATA, error: Exception | None = None) -> None:
        self.data, self.error, self.calls = data, error, 0

    def download(self, path: str, dest: Path) -> str:
        self.calls += 1
        dest.write_bytes(self.data[:3])
        if self.error is not None:
            raise self.error
        dest.write_bytes(self.data)
        return hashlib.sha256(self.data).hexdigest()


@pytest.fixture
def no_rehash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing a file on disk fails the test: the digest computed while streaming must be reused."""

    def refuse(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again after the download")

    monkeypatch.setattr(fetch_module, "sha256_file", refuse)


def test_a_verified_fetch_lands_the_file_and_reuses_the_streamed_digest(
    tmp_path: Path, no_rehash: None
) -> None:
    dest = tmp_path / "model.onnx"

    digest = fetch_verified(FakeFetcher(), "/models/m/1", SHA, dest)

    assert digest == SHA and dest.read_bytes() == DATA
    assert list(tmp_path.iterdir()) == [dest]


def test_a_fetch_whose_bytes_differ_from_the_signed_hash_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"

    with pytest.raises(DigestMismatch, match="differs from the signed chain record " + "ab" * 32):
        fetch_verified(FakeFetcher(), "/models/m/1", "ab" * 32, dest)

    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed, match="download failed: 409 integrity"):
        fetch_verified(FakeFetcher(error=OSError("409 integrity")), "/m", SHA, tmp_path / "model.onnx")

    assert list(tmp_path.iterdir()) == []


class FlakyFetcher(FakeFetcher):
    """Fails the first ``failures`` downloads with ``error``, then streams the bytes."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__()
        self.failures, self.flaky_error = failures, error

    def download(self, path: str, dest: Path) -> str:
        self.error = self.flaky_error if self.calls < self.failures else None
        return super().download(path, dest)


@pytest.fixture
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_module, "RETRY_DELAYS", (0.0, 0.0))


@pytest.mark.parametrize("error", [LinkError("model download: connection reset"), LinkError("busy", 503)])
def test_a_download_that_fails_for_a_passing_reason_is_tried_again(
    tmp_path: Path, no_pause: None, error: LinkError
) -> None:
    fetcher = FlakyFetcher(2, error)
    assert fetch_verified(fetcher, "/m", SHA, tmp_path / "model.onnx") == SHA
    assert fetcher.calls == 3 and (tmp_path / "model.onnx").read_bytes() == DATA


@pytest.mark.parametrize(
    ("error", "calls"),
    [
        (LinkError("model download: connection reset"), 3),  # still down after every try
        (LinkError("model download: 404 no such version", 404), 1),  # final at once
        (DeviceRevoked("revoked", 403), 1),
        (OSError("No space left on device"), 1),
    ],
)
def test_a_download_that_keeps_failing_or_fails_for_good_is_refused(
    tmp_path: Path, no_pause: None, error: Exception, calls: int
) -> None:
    fetcher = FlakyFetcher(99, error)
    with pytest.raises(DownloadFailed):
        fetch_verified(fetcher, "/m", SHA, tmp_path / "model.onnx")
    assert fetcher.calls == calls and list(tmp_path.iterdir()) == []


def test_a_hash_mismatch_is_never_tried_again(tmp_path: Path, no_pause: None) -> None:
    fetcher = FakeFetcher(data=b"tampered")
    with pytest.raises(DigestMismatch):
        fetch_verified(fetcher, "/m", SHA, tmp_path / "model.onnx")
    assert fetcher.calls == 1


def _executor(tmp_path: Path, fetcher: FakeFetcher) -> tuple[Executor, SlotStore]:
    slots = SlotStore(tmp_path)
    return Executor(slots, fetcher, ModelRuntime()), slots


def test_a_fetched_model_is_installed_without_hashing_it_twice(tmp_path: Path, no_rehash: None) -> None:
    executor, slots = _executor(tmp_path, FakeFetcher())
    ref = ModelRef("m", 1, SHA)

    outcome = executor.apply([Fetch(ref, "/models/m/1"), Verify(ref)], Desired(ref, "/models/m/1"))

    assert outcome is not None and outcome.state == "succeeded"
    assert slots.path(ref).read_bytes() == DATA and slots.installed() == [ref]
    assert list(slots.staging.iterdir()) == []


def test_verify_rehashes_an_installed_slot_and_removes_it_when_it_changed(tmp_path: Path) -> None:
    executor, slots = _executor(tmp_path, FakeFetcher())
    ref = ModelRef("m", 1, SHA)
    executor.apply([Fetch(ref, "/models/m/1"), Verify(ref)], Desired(ref, "/models/m/1"))
    slots.path(ref).write_bytes(b"changed on disk")

    outcome = executor.apply([Verify(ref)], Desired(ref))  # going back to an installed slot: no stream

    assert outcome is not None and outcome.state == "rejected"
    assert "differs from the signed chain record" in (outcome.error or "")
    assert not slots.path(ref).exists()


def test_a_fetch_refused_by_its_hash_is_rejected_and_nothing_is_installed(tmp_path: Path) -> None:
    executor, slots = _executor(tmp_path, FakeFetcher(data=b"other bytes"))
    ref = ModelRef("m", 1, SHA)

    outcome = executor.apply([Fetch(ref, "/models/m/1"), Verify(ref)], Desired(ref, "/models/m/1"))

    assert outcome is not None and outcome.state == "rejected" and outcome.ref == ref
    assert f"differs from the signed chain record {SHA}" in (outcome.error or "")
    assert slots.installed() == [] and list(slots.staging.iterdir()) == []


def test_a_grid_policy_comes_through_the_same_verified_fetch(tmp_path: Path) -> None:
    model = {"model_id": "p", "version": 2, "sha256": SHA, "download": "/models/p/2"}
    fetcher = FakeFetcher()

    path = fetch_policy(fetcher, model, tmp_path)
    again = fetch_policy(fetcher, model, tmp_path)  # a good copy on disk is re-hashed, not downloaded

    assert path == again == tmp_path / "grid" / "p" / "2" / "policy.onnx"
    assert path.read_bytes() == DATA and fetcher.calls == 1
    with pytest.raises(GridRunError, match=r"differs from the signed chain record .*; refused"):
        fetch_policy(FakeFetcher(), {**model, "version": 3, "sha256": "cd" * 32}, tmp_path)
    assert not any((tmp_path / "grid" / "p" / "3").iterdir())
