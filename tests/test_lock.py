"""requirements/lock.txt, which `make setup` installs with --no-deps (no resolver), against pyproject.toml:
every requirement of the locked extras is pinned there at a version it accepts (else: `make lock`), torch is
the CPU build, and nothing CUDA (nvidia-*, triton) is in it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
OVERRIDES = ROOT / "requirements" / "overrides.txt"
LOCKED_EXTRAS = ("controller", "agent", "train", "grid", "monitor", "dev")


def _requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in _requirement_lines(LOCK):
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert m, f"not an exact pin in {LOCK.name}: {line!r}"
        pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def test_lock_pins_every_requirement_of_the_locked_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    overridden = {canonicalize_name(Requirement(line).name) for line in _requirement_lines(OVERRIDES)}
    pins = _pins()
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in LOCKED_EXTRAS:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    problems = []
    for req in wanted:
        name = canonicalize_name(req.name)
        if name == "fedge" or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        if name not in pins:
            problems.append(f"{req}: not in the lock")
        elif name not in overridden and not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req}: the lock has {pins[name]}")
    assert not problems, "requirements/lock.txt is stale, run `make lock`:\n" + "\n".join(problems)


def test_lock_has_the_cpu_torch_and_nothing_cuda() -> None:
    pins = _pins()
    assert pins["torch"] == Version("2.13.0+cpu")
    # torch's CUDA build pulls nvidia-* wheels and `triton` (the GPU compiler); tritonclient (the Triton
    # server's HTTP client, dev extra) is not that
    cuda = sorted(n for n in pins if n == "triton" or n.startswith(("nvidia", "cuda")))
    assert not cuda, cuda


def test_overrides_apply_to_the_lock() -> None:
    pins = _pins()
    for line in _requirement_lines(OVERRIDES):
        req = Requirement(line)
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), req
