"""The controller's signing key: created 0600 on first use, never shown."""

from __future__ import annotations

import copy
import os
import pickle
import stat
from pathlib import Path

import pytest
from eth_account import Account

from controller.chain.errors import ControllerKeyError
from controller.chain.keys import KEY_FILE_NAME, ControllerKey, load_or_create_key

KEY = "0x" + "4c" * 32


def test_key_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    load_or_create_key(tmp_path)
    assert stat.S_IMODE((tmp_path / KEY_FILE_NAME).stat().st_mode) == 0o600


def test_key_file_is_reused(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path).address == load_or_create_key(tmp_path).address


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_key(tmp_path)
    os.chmod(tmp_path / KEY_FILE_NAME, 0o644)
    with pytest.raises(ControllerKeyError, match="chmod 600"):
        load_or_create_key(tmp_path)


def test_key_from_settings_signs_as_its_account() -> None:
    assert ControllerKey(KEY).address == Account.from_key(KEY).address


def test_repr_and_str_show_only_the_address() -> None:
    key = ControllerKey(KEY)
    for text in (repr(key), str(key), f"{key}"):
        assert "4c4c4c" not in text
        assert key.address in text


def test_key_cannot_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(ControllerKey(KEY))
    assert copy.deepcopy(ControllerKey(KEY)).address == ControllerKey(KEY).address


def test_invalid_key_error_does_not_echo_it() -> None:
    bad = "0x" + "zz" * 32
    with pytest.raises(ControllerKeyError) as caught:
        ControllerKey(bad)
    assert "zz" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
