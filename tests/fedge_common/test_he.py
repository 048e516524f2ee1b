"""CKKS packing: public contexts only for the aggregator, sums within 1e-3 relative, masks that cancel."""

from __future__ import annotations

import numpy as np
import pytest

from fedge_common import he


@pytest.fixture(scope="module")
def secret() -> bytes:
    return he.new_secret_context(he.HeParams())


def _ctx(secret: bytes) -> object:
    ctx = he.load_secret_context(secret)
    ctx.global_scale = 2.0 ** he.HeParams().scale_bits
    return ctx


def test_the_public_context_holds_no_secret_and_cannot_decrypt(secret: bytes) -> None:
    public = he.public_context(secret)
    ctx = he.load_public_context(public)
    chunks = he.encrypt(_ctx(secret), np.ones(10), he.HeParams())
    import tenseal as ts

    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(ctx, chunks[0]).decrypt()
    with pytest.raises(ValueError):
        ctx.secret_key()
    assert not ctx.has_galois_keys() and not ctx.has_relin_keys()


def test_the_aggregator_refuses_a_context_with_a_secret_key(secret: bytes) -> None:
    with pytest.raises(he.HeError, match="secret key"):
        he.load_public_context(secret)
    with pytest.raises(he.HeError, match="not a TenSEAL context"):
        he.load_public_context(b"garbage")


def test_the_sum_of_ciphertexts_equals_the_plaintext_sum(secret: bytes) -> None:
    params = he.HeParams()
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 0.2, 5000) * rng.integers(50, 300) for _ in range(5)]
    ctx = _ctx(secret)
    summed = he.add(
        he.load_public_context(he.public_context(secret)), [he.encrypt(ctx, u, params) for u in updates]
    )
    assert len(summed) == params.chunks(5000) == 3
    got = he.decrypt(ctx, summed, 5000)
    want = np.sum(updates, axis=0)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-6


def test_a_value_beyond_the_bound_is_refused(secret: bytes) -> None:
    params = he.HeParams()
    with pytest.raises(he.HeError, match="bound"):
        he.encrypt(_ctx(secret), np.array([params.value_bound * 2]), params)


def test_pairwise_masks_cancel_in_the_sum_and_hide_each_vector() -> None:
    seeds = {(0, 1): b"a" * 32, (0, 2): b"b" * 32, (1, 2): b"c" * 32}

    def mask(me: int) -> np.ndarray:
        mine = {p: (1 if me < p else -1, seeds[(min(me, p), max(me, p))]) for p in range(3) if p != me}
        return he.pairwise_mask(mine, 1000, 100.0)

    masks = [mask(i) for i in range(3)]
    assert np.max(np.abs(np.sum(masks, axis=0))) < 1e-9
    assert all(np.std(m) > 30 for m in masks)


def test_layouts_round_trip() -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, dtype=np.float32)}
    vector, layout = he.flatten(arrays)
    back = he.unflatten(vector, he.layout_from_json(he.layout_json(layout)))
    assert {k: (v.shape, v.dtype) for k, v in back.items()} == {
        k: (v.shape, v.dtype) for k, v in arrays.items()
    }
    np.testing.assert_array_equal(back["w"], arrays["w"])


@pytest.mark.parametrize("bad", [{"poly_modulus_degree": 1000}, {"scale_bits": 60}])
def test_bad_parameters_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(he.HeError):
        he.HeParams(**bad)
