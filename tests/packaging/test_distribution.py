"""The fedge distribution: `python -m build` (sdist + wheel, from a clean copy of the tracked files) passes
`twine check --strict`, the wheel carries every package and both console scripts and no tests; and
`fedge-controller` on an install without the controller extra says which extra to install."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sdist_and_wheel_build_and_pass_twine_check(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(path.read_bytes())
    # --no-isolation -x: the venv's setuptools builds it (no download); `wheel` is not needed by it
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "-x", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel, sdist = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheel) == 1 and len(sdist) == 1
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel[0]), str(sdist[0])],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0 and checked.stdout.count("PASSED") == 2, checked.stdout + checked.stderr
    names = zipfile.ZipFile(wheel[0]).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("fedge-")}
    assert {"controller", "edge_agent", "fedge_protocol", "fedge_common", "simulator"} <= tops
    assert "tests" not in tops
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel[0]).read(entry).decode()
    assert (
        "fedge-controller = controller.cli:main" in scripts and "fedge-agent = edge_agent.cli:main" in scripts
    )
    metadata = zipfile.ZipFile(wheel[0]).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Provides-Extra: agent" in metadata and "Provides-Extra: controller" in metadata
    with tarfile.open(sdist[0]) as tar:
        assert any(n.endswith("/pyproject.toml") for n in tar.getnames())


BLOCK_CONTROLLER_EXTRA = """
import sys
from importlib.abc import MetaPathFinder

class NoControllerExtra(MetaPathFinder):  # an agent-only install: the controller extra's modules are absent
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"fastapi", "uvicorn", "sqlalchemy", "web3", "torch", "amqtt"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoControllerExtra())
sys.argv = ["fedge-controller", "serve", "--port", "0"]
from controller.cli import main
main()
"""


def test_fedge_controller_without_the_controller_extra_names_the_extra(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_CONTROLLER_EXTRA],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "FEDGE_DATA_DIR": str(tmp_path / "d")},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pip install 'fedge[controller]'" in done.stderr and "Traceback" not in done.stderr, done.stderr
