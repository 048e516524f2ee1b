"""CKKS packing for HE aggregation (TenSEAL, imported lazily): parameters, contexts, chunked vectors, masks.

Both ends use this module: a device makes the key set (:func:`new_secret_context`), encrypts its weighted
update in chunks of ``poly_modulus_degree / 2`` slots (:func:`encrypt`) and decrypts an aggregate
(:func:`decrypt`); the controller only ever loads a **public** context (:func:`load_public_context`
refuses anything that holds a secret key, Galois keys or relinearisation keys) and adds ciphertexts
(:func:`add`). The default parameters (N=4096, coefficient moduli [60, 49] bits, scale 2^34) keep one
60-bit data prime: 8.0x the float32 bytes of the vector, relative error of a 10-client sum ~5e-9
(``docs/fl-he.md``). :func:`pairwise_mask` draws the cancelling masks of HE + masking.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "HeError",
    "HeParams",
    "Layout",
    "add",
    "decrypt",
    "encrypt",
    "fingerprint",
    "flatten",
    "layout_from_json",
    "layout_json",
    "layout_size",
    "load_public_context",
    "load_secret_context",
    "new_secret_context",
    "pairwise_mask",
    "public_context",
    "unflatten",
]

INSTALL_HINT = "HE aggregation needs TenSEAL: pip install 'fedge[train]' (devices) or 'fedge[controller]'"

#: (name, shape, dtype) of every array of the plaintext model, in order
Layout = list[tuple[str, tuple[int, ...], str]]

POLY_DEGREES = (4096, 8192, 16384)
#: coefficient moduli per degree: one 60-bit data prime + the special prime (128-bit security bounds:
#: 109 / 218 / 438 bits in all)
_MODULI = {4096: (60, 49), 8192: (60, 60), 16384: (60, 60)}


class HeError(ValueError):
    """A context, ciphertext or parameter set that cannot be used as asked."""


def _tenseal() -> Any:
    try:
        import tenseal
    except ImportError as exc:  # pragma: no cover - the extras bring it
        raise HeError(INSTALL_HINT) from exc
    return tenseal


@dataclass(frozen=True)
class HeParams:
    """CKKS parameters of a job (add-only: no rescaling, no rotations)."""

    poly_modulus_degree: int = 4096
    scale_bits: int = 34

    def __post_init__(self) -> None:
        if self.poly_modulus_degree not in POLY_DEGREES:
            raise HeError(
                f"poly_modulus_degree must be one of {POLY_DEGREES}, got {self.poly_modulus_degree}"
            )
        if not 20 <= self.scale_bits <= 50:
            raise HeError(f"scale_bits must be in [20, 50], got {self.scale_bits}")

    @property
    def coeff_mod_bit_sizes(self) -> tuple[int, ...]:
        return _MODULI[self.poly_modulus_degree]

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def value_bound(self) -> float:
        """Largest |value| a slot may hold (data prime / scale / 2), sums included."""
        return float(2 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 1))

    def mask_amplitude(self, peers: int) -> float:
        """Half-width of each pairwise mask: ``peers - 1`` of them and the value stay below a quarter
        of :attr:`value_bound`."""
        return self.value_bound / (4.0 * max(peers - 1, 1))

    def chunks(self, length: int) -> int:
        return max(1, math.ceil(length / self.slots))

    def to_json(self) -> str:
        return json.dumps({"poly_modulus_degree": self.poly_modulus_degree, "scale_bits": self.scale_bits})

    @classmethod
    def from_json(cls, text: str) -> HeParams:
        try:
            raw = json.loads(text)
            return cls(int(raw["poly_modulus_degree"]), int(raw["scale_bits"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise HeError(f"bad HE parameters {text!r}: {exc}") from exc


def new_secret_context(params: HeParams) -> bytes:
    """A fresh key set, serialized with its secret and public key (no Galois, no relinearisation keys)."""
    ts = _tenseal()
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = 2.0**params.scale_bits
    data: bytes = ctx.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return data


def public_context(secret: bytes) -> bytes:
    """The public part of a serialized secret context: public key only."""
    ctx = load_secret_context(secret)
    data: bytes = ctx.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return data


def fingerprint(public: bytes) -> str:
    """SHA-256 (hex) of a serialized public context: names the key set of a job."""
    return hashlib.sha256(public).hexdigest()


def _load(data: bytes) -> Any:
    ts = _tenseal()
    try:
        return ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError from its protobuf parser
        raise HeError(f"not a TenSEAL context: {exc}") from exc


def load_public_context(data: bytes) -> Any:
    """A context for adding ciphertexts; refuses one holding a secret key, Galois or relin keys."""
    ctx = _load(data)
    if ctx.has_secret_key() or ctx.is_private():
        raise HeError("this context holds a secret key; the aggregator takes public contexts only")
    if ctx.has_galois_keys() or ctx.has_relin_keys():
        raise HeError("this context holds Galois or relinearisation keys; addition needs neither")
    return ctx


def load_secret_context(data: bytes) -> Any:
    ctx = _load(data)
    if not ctx.has_secret_key():
        raise HeError("this context holds no secret key")
    return ctx


def encrypt(ctx: Any, vector: np.ndarray[Any, Any], params: HeParams) -> list[bytes]:
    """``vector`` (float64) as serialized CKKS ciphertexts of ``params.slots`` values each."""
    values = np.asarray(vector, dtype=np.float64).ravel()
    if values.size and float(np.max(np.abs(values))) >= params.value_bound:
        raise HeError(f"a value exceeds the CKKS bound {params.value_bound:g} of these parameters")
    ts = _tenseal()
    return [
        ts.ckks_vector(ctx, values[i : i + params.slots]).serialize()
        for i in range(0, max(values.size, 1), params.slots)
    ]


def add(ctx: Any, updates: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Chunk-wise sum of several clients' ciphertexts under ``ctx`` (a public context is enough)."""
    if not updates:
        raise HeError("nothing to add")
    count = len(updates[0])
    if any(len(u) != count for u in updates):
        raise HeError("the updates have different numbers of chunks")
    ts = _tenseal()
    out = []
    for j in range(count):
        try:
            acc = ts.ckks_vector_from(ctx, updates[0][j])
            for update in updates[1:]:
                acc += ts.ckks_vector_from(ctx, update[j])
        except HeError:
            raise
        except Exception as exc:
            raise HeError(f"chunk {j} is not a ciphertext of this key set: {exc}") from exc
        out.append(acc.serialize())
    return out


def decrypt(ctx: Any, chunks: Sequence[bytes], length: int) -> np.ndarray[Any, Any]:
    """The first ``length`` values of the decrypted chunks (``ctx`` must hold the secret key)."""
    ts = _tenseal()
    parts = [np.asarray(ts.ckks_vector_from(ctx, c).decrypt(), dtype=np.float64) for c in chunks]
    values = np.concatenate(parts) if parts else np.zeros(0)
    if values.size < length:
        raise HeError(f"the chunks hold {values.size} values, {length} expected")
    return values[:length]


def flatten(arrays: Mapping[str, np.ndarray[Any, Any]]) -> tuple[np.ndarray[Any, Any], Layout]:
    layout: Layout = [(name, tuple(int(d) for d in a.shape), str(a.dtype)) for name, a in arrays.items()]
    if not arrays:
        return np.zeros(0), layout
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays.values()]), layout


def unflatten(vector: np.ndarray[Any, Any], layout: Layout) -> dict[str, np.ndarray[Any, Any]]:
    out, at = {}, 0
    for name, shape, dtype in layout:
        size = int(np.prod(shape)) if shape else 1
        out[name] = vector[at : at + size].reshape(shape).astype(dtype)
        at += size
    if at != vector.size:
        raise HeError(f"the layout covers {at} values, the vector has {vector.size}")
    return out


def layout_json(layout: Layout) -> str:
    return json.dumps([[n, list(s), d] for n, s, d in layout])


def layout_from_json(text: str) -> Layout:
    try:
        return [(str(n), tuple(int(x) for x in s), str(d)) for n, s, d in json.loads(text)]
    except (ValueError, TypeError) as exc:
        raise HeError(f"bad layout {text[:80]!r}: {exc}") from exc


def layout_size(layout: Layout) -> int:
    return sum(int(np.prod(shape)) if shape else 1 for _, shape, _ in layout)


def pairwise_mask(
    seeds: Mapping[int, tuple[int, bytes]], length: int, amplitude: float
) -> np.ndarray[Any, Any]:
    """Sum of ``sign * uniform(-amplitude, amplitude)`` vectors, one per peer seed ``{peer: (sign, seed)}``;
    the two ends of a pair draw the same vector with opposite signs, so masks cancel in the sum."""
    total = np.zeros(length, dtype=np.float64)
    for _peer, (sign, seed) in sorted(seeds.items()):
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
        total += sign * rng.uniform(-amplitude, amplitude, length)
    return total
