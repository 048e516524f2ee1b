"""`fedge login` saves URL + token as a profile in a 0600 file; later commands use it; flags still win."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tests.conftest import ADMIN_TOKEN, LiveServer


def _cli(live: LiveServer, home: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FEDGE_URL", "FEDGE_TOKEN", "FEDGE_PROFILE")}
    env["XDG_CONFIG_HOME"] = str(home)
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "controller.user_cli", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_login_then_use_the_profile(live: LiveServer, tmp_path: Path) -> None:
    rc, _, err = _cli(live, tmp_path, "login", live.url, "--token", ADMIN_TOKEN, "--profile", "lab")
    assert rc == 0, err
    path = tmp_path / "fedge" / "profiles.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["default"] == "lab"
    rc, out, err = _cli(live, tmp_path, "tokens", "list")  # no URL, no token on the command line
    assert rc == 0, err
    assert "admin" in out
    rc, out, _ = _cli(live, tmp_path, "profiles", "--json")
    assert json.loads(out)["profiles"] == [{"name": "lab", "url": live.url, "default": True, "token": True}]
    assert ADMIN_TOKEN not in out


def test_bad_token_is_refused_at_login_and_unknown_profile_is_one_line(
    live: LiveServer, tmp_path: Path
) -> None:
    rc, _, err = _cli(live, tmp_path, "login", live.url, "--token", "nope")
    assert rc == 1 and "refused the token" in err and "Traceback" not in err
    assert not (tmp_path / "fedge" / "profiles.json").exists()
    rc, _, err = _cli(live, tmp_path, "--profile", "ghost", "tokens", "list")
    assert rc == 1 and "no profile 'ghost'" in err


def test_a_profile_file_readable_by_others_is_refused(live: LiveServer, tmp_path: Path) -> None:
    assert _cli(live, tmp_path, "login", live.url, "--token", ADMIN_TOKEN)[0] == 0
    path = tmp_path / "fedge" / "profiles.json"
    path.chmod(0o644)
    rc, _, err = _cli(live, tmp_path, "tokens", "list")
    assert rc == 1 and "chmod 600" in err


def test_flags_win_over_the_profile(live: LiveServer, tmp_path: Path) -> None:
    assert _cli(live, tmp_path, "login", "http://127.0.0.1:9", "--token", ADMIN_TOKEN, "--no-check")[0] == 0
    rc, _, err = _cli(live, tmp_path, "tokens", "list")  # the profile's dead URL
    assert rc == 1 and "cannot reach http://127.0.0.1:9" in err
    rc, out, err = _cli(live, tmp_path, "--controller", live.url, "tokens", "list")  # the flag wins
    assert rc == 0 and "admin" in out, err
