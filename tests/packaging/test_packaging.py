"""Install paths of the edge agent: the systemd unit (systemd-analyze, hardening keys), install-agent.sh
(shellcheck, --dry-run, and one real install into a temp prefix that enrolls with a live controller), and
the Dockerfiles (no Docker engine here: checked statically)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, LiveServer

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
UNIT = PACKAGING / "systemd" / "fedge-agent.service"
SCRIPT = PACKAGING / "install-agent.sh"
USER = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: [Section], Key=Value, repeated keys accumulate, # and ; comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not Key=Value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def install(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done


def verify_unit(unit: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", f"./{unit.name}"], cwd=unit.parent, capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


# ------------------------------------------------------------------------------------------ systemd unit
def test_unit_is_hardened_and_runs_the_agent_from_its_venv() -> None:
    unit = parse_unit(UNIT.read_text())
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert (
        service["ExecStart"] == "/opt/fedge-agent/venv/bin/fedge-agent run --state-dir /var/lib/fedge-agent"
    )
    assert (service["User"], service["Group"], service["StateDirectory"]) == ("fedge-agent",) * 3
    assert service["StateDirectoryMode"] == "0700"
    assert service["Restart"] == "on-failure" and service["RestartSec"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
        "ReadWritePaths": "/var/lib/fedge-agent",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert "@system-service" in unit["Service"]["SystemCallFilter"]
    assert unit["Unit"]["ConditionPathExists"] == ["/var/lib/fedge-agent/identity.json"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_passes_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    # verify needs an executable ExecStart: point it at this checkout's agent
    agent = shutil.which("fedge-agent", path=str(ROOT / ".venv" / "bin")) or shutil.which("fedge-agent")
    assert agent, "fedge-agent is not installed in this environment"
    unit = tmp_path / "fedge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/fedge-agent/venv/bin/fedge-agent", agent))
    verify_unit(unit)
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    score = re.search(r"Overall exposure level for fedge-agent.service: ([0-9.]+)", done.stdout)
    assert score and float(score.group(1)) <= 3.0, done.stdout[-500:]


def test_gpu_dropin_opens_only_nvidia_devices() -> None:
    dropin = parse_unit((PACKAGING / "systemd" / "gpu.conf").read_text())["Service"]
    assert dropin["PrivateDevices"] == ["no"] and dropin["DevicePolicy"] == ["closed"]
    assert dropin["DeviceAllow"] and all(
        re.fullmatch(r"/dev/nv[\w-]+ rw", d) for d in dropin["DeviceAllow"]
    ), dropin["DeviceAllow"]


# ------------------------------------------------------------------------------------- install script
def test_install_script_passes_bash_n_and_shellcheck() -> None:
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert shutil.which("shellcheck"), "shellcheck missing (scripts/setup-system.sh installs it)"
    done = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_dry_run_prints_every_action_and_changes_nothing(tmp_path: Path) -> None:
    prefix, state, units = tmp_path / "opt", tmp_path / "state", tmp_path / "units"
    out = install(
        "--dry-run",
        "--prefix", str(prefix), "--state-dir", str(state), "--unit-dir", str(units),
        "--source", str(ROOT), "--controller", "http://127.0.0.1:9", "--token", "fedge-enroll-x",
        "--label", "site=north", "--label", "rack=3", "--systemd", "--gpu",
        "--user", "fedge-agent-dryrun-test",
    ).stdout  # fmt: skip
    assert not prefix.exists() and not state.exists() and not units.exists()
    lines = [line for line in out.splitlines() if line.startswith("+ ")]
    joined = "\n".join(lines)
    if USER == "root":  # a missing service user is created (only printed here)
        assert "+ useradd --system --user-group" in joined and "fedge-agent-dryrun-test" in joined
        assert subprocess.run(["id", "fedge-agent-dryrun-test"], capture_output=True).returncode != 0
    assert f"+ {prefix}/venv/bin/python -m pip install" in joined  # note: q-quoted "[agent]"
    assert "\\[agent\\]" in joined
    assert (
        f"--constraint {ROOT}/requirements/lock.txt" in joined
    )  # a checkout installs at the lock's versions
    assert "pip uninstall --quiet --yes onnxruntime" in joined and "onnxruntime-gpu==1.32.0" in joined
    enroll = next(line for line in lines if " enroll " in line)
    assert "--controller http://127.0.0.1:9 --token fedge-enroll-x" in enroll
    assert "--label site=north --label rack=3" in enroll
    assert f"{units}/fedge-agent.service" in joined and f"{units}/fedge-agent.service.d/gpu.conf" in joined


def test_dry_run_source_kinds(tmp_path: Path) -> None:
    wheel = tmp_path / "fedge-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    expected = {
        str(wheel): f"{wheel}\\[agent\\]",
        "https://pypi.example/simple": "--upgrade --index-url https://pypi.example/simple fedge\\[agent\\]",
        "fedge[agent]==0.1.0": "--upgrade fedge\\[agent\\]==0.1.0",
        "": "--upgrade fedge\\[agent\\]",
    }
    for source, tail in expected.items():
        args = ["--dry-run", "--no-systemd", "--prefix", str(tmp_path / "opt"), "--user", USER]
        out = install(*args, *(["--source", source] if source else [])).stdout
        pip = next(line for line in out.splitlines() if " -m pip install " in line)
        assert pip.endswith(tail), (source, pip)


def test_install_script_refuses_bad_arguments(tmp_path: Path) -> None:
    for args in (["--token", "t"], ["--label", "novalue"], ["--frobnicate"]):
        done = subprocess.run(
            ["bash", str(SCRIPT), "--dry-run", "--prefix", str(tmp_path), *args],
            capture_output=True,
            text=True,
        )
        assert done.returncode != 0 and "ERROR" in done.stderr, (args, done.stderr)


@pytest.mark.slow
def test_real_install_into_a_temp_prefix_enrolls_and_is_idempotent(live: LiveServer, tmp_path: Path) -> None:
    """pip-installs `fedge[agent]` from this checkout into a fresh venv (local wheels/index), enrolls
    with a live controller, renders the unit for the prefix; a second run changes nothing."""
    r = httpx.post(
        f"{live.url}/v1/enrollment-tokens",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"labels": {"installed-by": "script"}, "ttl_seconds": 600},
    )
    assert r.status_code == 201, r.text
    prefix, state, units = tmp_path / "opt", tmp_path / "state", tmp_path / "units"
    common = ["--prefix", str(prefix), "--state-dir", str(state), "--source", str(ROOT), "--user", USER,
              "--pip-arg=--no-compile"]  # fmt: skip
    out = install(
        *common, "--controller", live.url, "--token", r.json()["token"], "--label", "rack=7",
        *(["--systemd", "--unit-dir", str(units)] if USER == "root" else ["--no-systemd"]),
        timeout=400,
    ).stdout  # fmt: skip
    assert "[install-agent] done" in out
    venv = prefix / "venv"
    agent = venv / "bin" / "fedge-agent"

    facts = subprocess.run([str(agent), "facts"], capture_output=True, text=True, timeout=60, check=True)
    assert "CPUExecutionProvider" in json.loads(facts.stdout)["ort_providers"]
    probe = (
        "import importlib.util, json; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None "
        "for m in ['torch', 'fastapi', 'web3', 'uvicorn', 'sqlalchemy', 'onnxruntime', 'edge_agent']}))"
    )
    found = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True,
                                      text=True, check=True).stdout)  # fmt: skip
    assert found == {
        "torch": False,
        "fastapi": False,
        "web3": False,
        "uvicorn": False,
        "sqlalchemy": False,
        "onnxruntime": True,
        "edge_agent": True,
    }

    identity = json.loads((state / "identity.json").read_text())
    assert (state / "device.key").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    device = httpx.get(
        f"{live.url}/v1/devices/{identity['device_id']}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    assert device["labels"] == {"installed-by": "script", "rack": "7"}
    assert not (ROOT / "build").exists(), "the source tree must stay untouched"

    if USER == "root":
        unit = units / "fedge-agent.service"
        text = unit.read_text()
        assert f"ExecStart={agent} run --state-dir {state}" in text
        assert f"ReadWritePaths={state}" in text and "StateDirectory=" not in text  # not under /var/lib
        verify_unit(unit)

    again = install(
        *common, "--dry-run", *(["--systemd", "--unit-dir", str(units)] if USER == "root" else [])
    )
    assert f"venv {venv} exists" in again.stdout
    assert f"already enrolled: {identity['device_id']}" in again.stdout
    assert "useradd" not in again.stdout and " enroll " not in again.stdout
    if USER == "root":
        assert "is up to date" in again.stdout


# --------------------------------------------------------------------------------------------- docker
def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))  # fmt: skip
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()
    ]


DOCKERFILES = {
    "agent.Dockerfile": "fedge-agent",
    "agent-cuda.Dockerfile": "fedge-agent",
    "controller.Dockerfile": "fedge-controller",
}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfiles_build_from_the_local_base_offline_as_non_root(name: str) -> None:
    ins = _instructions(PACKAGING / "docker" / name)
    args = dict(arg.split("=", 1) for op, arg in ins if op == "ARG" and "=" in arg)
    assert args["BASE_IMAGE"] == "localhost/fedge-base:bookworm"
    assert [arg for op, arg in ins if op == "FROM"] == ["${BASE_IMAGE}"]
    users = [arg for op, arg in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert ("ENTRYPOINT", f'["{DOCKERFILES[name]}"]') in ins
    assert any(op == "HEALTHCHECK" and "/healthz" in arg for op, arg in ins)
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    assert "useradd --system" in runs and "-m venv" in runs
    # every pip install reads the bind-mounted wheelhouse only: no index, nothing from the network
    installs = re.findall(r"pip install [^&;]*", runs.replace("$pip", "pip install --no-index"))
    assert installs and all("--no-index" in cmd for cmd in installs), installs
    assert "--mount=type=bind,target=/tmp/wheelhouse" in runs
    assert not [op for op, _ in ins if op in ("COPY", "ADD")]  # the wheelhouse never becomes a layer


def test_agent_images_install_the_agent_extra_and_cuda_swaps_onnxruntime() -> None:
    cpu = " ".join(a for op, a in _instructions(PACKAGING / "docker" / "agent.Dockerfile") if op == "RUN")
    assert "'fedge[agent]'" in cpu and "onnxruntime-gpu" not in cpu
    runs = " ".join(
        a for op, a in _instructions(PACKAGING / "docker" / "agent-cuda.Dockerfile") if op == "RUN"
    )
    order = [runs.index(s) for s in ("$pip 'fedge[agent]'", "pip uninstall --quiet --yes onnxruntime",
                                     "$pip onnxruntime-gpu")]  # fmt: skip
    assert order == sorted(order)


def test_install_script_wheelhouse_installs_offline(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    args = ["--dry-run", "--no-systemd", "--prefix", str(tmp_path / "opt"), "--user", USER]
    refused = subprocess.run(
        ["bash", str(SCRIPT), *args, "--wheelhouse", str(house)], capture_output=True, text=True
    )
    assert refused.returncode != 0 and "no fedge wheel" in refused.stderr
    (house / "fedge-0.1.0-py3-none-any.whl").write_bytes(b"")
    gpu = subprocess.run(
        ["bash", str(SCRIPT), *args, "--gpu", "--wheelhouse", str(house)], capture_output=True, text=True
    )
    assert gpu.returncode != 0 and "onnxruntime_gpu" in gpu.stderr
    out = install(*args, "--wheelhouse", str(house)).stdout
    pip = next(line for line in out.splitlines() if " -m pip install " in line)
    assert pip.endswith(f"--no-index --find-links {house} --upgrade fedge\\[agent\\]"), pip
    assert "--constraint" not in pip
