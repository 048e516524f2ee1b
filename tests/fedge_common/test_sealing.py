"""Sealing to a device key: only the recipient opens it, under the same associated data, untampered."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fedge_common.sealing import SealError, open_sealed, pair_seed, public_key_from_pem, public_key_pem, seal
from fedge_protocol.he import seal_aad


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ex(key: ec.EllipticCurvePrivateKey):  # type: ignore[no-untyped-def]
    return lambda peer: key.exchange(ec.ECDH(), peer)


SECRET = b"the CKKS secret context" * 100


def test_the_recipient_opens_what_the_sender_sealed() -> None:
    sender, recipient = _key(), _key()
    aad = seal_aad("job-1", 7, 3)
    blob = seal(_ex(sender), recipient.public_key(), SECRET, aad=aad)
    assert SECRET not in blob
    assert open_sealed(_ex(recipient), sender.public_key(), blob, aad=aad) == SECRET


def test_a_wrong_recipient_cannot_open_it() -> None:
    sender, recipient, other = _key(), _key(), _key()
    aad = seal_aad("job-1", 7, 3)
    blob = seal(_ex(sender), recipient.public_key(), SECRET, aad=aad)
    with pytest.raises(SealError):
        open_sealed(_ex(other), sender.public_key(), blob, aad=aad)


def test_a_claimed_sender_that_did_not_seal_it_fails() -> None:
    sender, recipient, impostor = _key(), _key(), _key()
    blob = seal(_ex(sender), recipient.public_key(), SECRET, aad=b"a")
    with pytest.raises(SealError):
        open_sealed(_ex(recipient), impostor.public_key(), blob, aad=b"a")


@pytest.mark.parametrize("where", [4, 20, 40, -1])
def test_a_tampered_blob_fails(where: int) -> None:
    sender, recipient = _key(), _key()
    blob = bytearray(seal(_ex(sender), recipient.public_key(), SECRET, aad=b"a"))
    blob[where] ^= 0x01
    with pytest.raises(SealError):
        open_sealed(_ex(recipient), sender.public_key(), bytes(blob), aad=b"a")


def test_other_associated_data_fails() -> None:
    """A blob sealed for one job, recipient and sender is not accepted for another."""
    sender, recipient = _key(), _key()
    blob = seal(_ex(sender), recipient.public_key(), SECRET, aad=seal_aad("job-1", 7, 3))
    for aad in (seal_aad("job-2", 7, 3), seal_aad("job-1", 8, 3), seal_aad("job-1", 7, 4)):
        with pytest.raises(SealError):
            open_sealed(_ex(recipient), sender.public_key(), blob, aad=aad)


def test_truncated_or_foreign_bytes_are_not_a_blob() -> None:
    key = _key()
    with pytest.raises(SealError, match="not a sealed blob"):
        open_sealed(_ex(key), key.public_key(), b"FSL1short", aad=b"")


def test_two_seals_of_the_same_secret_differ() -> None:
    sender, recipient = _key(), _key()
    assert seal(_ex(sender), recipient.public_key(), SECRET, aad=b"a") != seal(
        _ex(sender), recipient.public_key(), SECRET, aad=b"a"
    )


def test_both_ends_of_a_pair_derive_the_same_seed_and_other_pairs_another() -> None:
    a, b, c = _key(), _key(), _key()
    ab = pair_seed(_ex(a), b.public_key(), b"round 1")
    assert ab == pair_seed(_ex(b), a.public_key(), b"round 1")
    assert ab != pair_seed(_ex(a), c.public_key(), b"round 1")
    assert ab != pair_seed(_ex(a), b.public_key(), b"round 2")


def test_public_keys_round_trip_and_only_p256_is_accepted() -> None:
    key = _key()
    pem = public_key_pem(key.public_key())
    assert public_key_from_pem(pem).public_numbers() == key.public_key().public_numbers()
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(SealError, match="P-256"):
        public_key_from_pem(public_key_pem(other))
    with pytest.raises(SealError):
        public_key_from_pem("not a key")
