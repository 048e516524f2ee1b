"""The controller's signing key: from settings (hex) or a 0600 file in the data directory.

The key is never logged, repr'd, pickled or put in an exception message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any, NoReturn

from controller.chain.errors import ControllerKeyError
from fedge_common.files import fsync_dir

log = logging.getLogger(__name__)

KEY_FILE_NAME = "controller.key"
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class ControllerKey:
    """A secp256k1 private key that signs transactions; only its address is ever shown."""

    __slots__ = ("_account",)
    _account: Any

    def __init__(self, private_key: str | bytes) -> None:
        from eth_account import Account  # imported here: eth_account is slow to import

        try:
            account = Account.from_key(private_key)
        except Exception:
            # Never chain the original exception: its message may contain the key.
            raise ControllerKeyError("invalid controller private key (expected 32 bytes, hex)") from None
        object.__setattr__(self, "_account", account)

    @property
    def address(self) -> str:
        """Checksummed address of the key's account."""
        address: str = self._account.address
        return address

    def sign_transaction(self, transaction: dict[str, Any]) -> bytes:
        """Sign a transaction dict; returns the raw signed transaction."""
        signed = self._account.sign_transaction(transaction)
        return bytes(signed.raw_transaction)

    def __repr__(self) -> str:
        return f"ControllerKey(address={self.address})"

    __str__ = __repr__

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("ControllerKey is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("ControllerKey cannot be pickled")

    def __copy__(self) -> ControllerKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> ControllerKey:
        return self


def load_or_create_key(key_dir: Path) -> ControllerKey:
    """Load `key_dir/controller.key`, creating it (mode 0600) with a fresh random key on first use.

    Refuses a key file that group or others can read.
    """
    key_dir.mkdir(parents=True, exist_ok=True)
    path = key_dir / KEY_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process may be creating it right now: give it a moment to write the key.
        for _ in range(20):
            if path.stat().st_size > 0:
                break
            time.sleep(0.05)
        return _read_key_file(path)
    try:
        key = _random_private_key()
        os.write(fd, (key.removeprefix("0x") + "\n").encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
    fsync_dir(key_dir)
    log.info("created controller key file %s", path)
    return _read_key_file(path)


def _random_private_key() -> str:
    while True:
        candidate = secrets.token_bytes(32)
        if 0 < int.from_bytes(candidate, "big") < SECP256K1_ORDER:
            return candidate.hex()


def _read_key_file(path: Path) -> ControllerKey:
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise ControllerKeyError(
            f"controller key file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    text = path.read_text(encoding="ascii").strip()
    if not text:
        raise ControllerKeyError(f"controller key file {path} is empty")
    try:
        return ControllerKey(text)
    except ControllerKeyError:
        raise ControllerKeyError(f"controller key file {path} does not hold a valid private key") from None
