"""Streaming integrity helpers: a changed object never reaches a reader whole."""

from __future__ import annotations

import hashlib

import pytest

from controller.registry.hashing import IntegrityError, iter_verified


def test_matching_bytes_stream_through_unchanged() -> None:
    chunks = [b"a" * 10, b"b" * 10, b"c"]
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()

    assert list(iter_verified(iter(chunks), expected)) == chunks
    assert list(iter_verified(iter([]), hashlib.sha256(b"").hexdigest())) == []


def test_changed_bytes_stop_before_the_last_chunk() -> None:
    chunks = [b"a" * 10, b"b" * 10, b"c"]
    expected = hashlib.sha256(b"something else").hexdigest()
    received: list[bytes] = []

    with pytest.raises(IntegrityError, match="expected"):
        for chunk in iter_verified(iter(chunks), expected):
            received.append(chunk)

    assert received == chunks[:-1]
