"""Saved connections for the ``fedge`` CLI: ``fedge login`` stores a controller URL and token under a
profile name in ``$XDG_CONFIG_HOME/fedge/profiles.json`` (default ``~/.config/fedge``), written atomically
with mode 0600 (the directory 0700). ``--profile NAME`` / ``FEDGE_PROFILE`` picks one; ``--controller`` /
``FEDGE_URL`` and ``--token`` / ``FEDGE_TOKEN`` still win over a profile's values."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge_common.files import atomic_write

DEFAULT = "default"


@dataclass(frozen=True)
class Profile:
    name: str
    url: str
    token: str | None


class ProfileError(Exception):
    """A profile file that cannot be used (named, with the fix)."""


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fedge" / "profiles.json"


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"default": None, "profiles": {}}
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ProfileError(f"{path} is readable by others (mode {mode:o}): run `chmod 600 {path}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(
            f"{path} is not a fedge profile file ({exc}); remove it and `fedge login` again"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ProfileError(f"{path} is not a fedge profile file; remove it and `fedge login` again")
    return data


def save(name: str, url: str, token: str | None, make_default: bool, path: Path | None = None) -> Path:
    """Store (or replace) a profile; the first one saved becomes the default."""
    path = path or config_path()
    data = _load(path)
    data["profiles"][name] = {"url": url.rstrip("/"), "token": token}
    if make_default or not data.get("default"):
        data["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
    return path


def remove(name: str, path: Path | None = None) -> bool:
    path = path or config_path()
    data = _load(path)
    if data["profiles"].pop(name, None) is None:
        return False
    if data.get("default") == name:
        data["default"] = next(iter(sorted(data["profiles"])), None)
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
    return True


def listing(path: Path | None = None) -> tuple[str | None, list[Profile]]:
    data = _load(path or config_path())
    profiles = [Profile(n, str(p.get("url")), p.get("token")) for n, p in sorted(data["profiles"].items())]
    return data.get("default"), profiles


def resolve(name: str | None, path: Path | None = None) -> Profile | None:
    """The named profile, else the default one, else None (no file); a named one that is missing is an
    error naming the ones there are."""
    default, profiles = listing(path)
    by_name = {p.name: p for p in profiles}
    wanted = name or default
    if wanted is None:
        return None
    if wanted not in by_name:
        known = ", ".join(by_name) or "none"
        raise ProfileError(
            f"no profile {wanted!r} (saved: {known}); run `fedge login URL --profile {wanted}`"
        )
    return by_name[wanted]
