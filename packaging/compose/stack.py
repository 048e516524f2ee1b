#!/usr/bin/env python3
"""Run packaging/compose/compose.yaml with plain podman (podman-compose is not installed here).

``stack.py up [--profile grafana]`` builds missing images (``--pull=never``), creates the named volumes,
starts the services in dependency order (one-shot services run to completion first) and waits for each
health check; ``stack.py down [--volumes]`` removes the containers (and the volumes);
``stack.py restart SERVICE`` restarts one and waits until it is healthy again; ``stack.py ps``.
Only the parts of the Compose spec compose.yaml uses are read: image, build, command, environment,
volumes, network_mode, pid, depends_on (+condition), healthcheck, profiles, restart.
Services whose image is neither present nor buildable (Grafana here: no registry) are skipped with a note.
While localhost/fedge-controller:dev is not built (``make images``), the controller and mosquitto-init run
from the checkout's .venv on the host instead (same environment; data dir = the fedge-data volume's host
mountpoint, which is then also mounted at that path into Mosquitto so the rendered paths match).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUN_DIR = Path(os.environ.get("FEDGE_STACK_RUN_DIR", ROOT / ".fedge" / "stack"))
DATA = "/var/lib/fedge"  # the controller image's data dir (the fedge-data volume)
HOST_FALLBACK = {"controller", "mosquitto-init"}
PODMAN = str(HERE.parent / "images" / "podman.sh")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


def load(path: Path = HERE / "compose.yaml") -> dict[str, Any]:
    """compose.yaml with ${VAR:-default} filled from the environment."""
    return _interpolate(yaml.safe_load(path.read_text()))


def _podman(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    out = subprocess.PIPE if quiet else None
    return subprocess.run([PODMAN, *args], check=check, text=True, stdout=out, stderr=out)


def _order(services: dict[str, Any]) -> list[str]:
    done: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in seen:
            raise SystemExit(f"dependency cycle through {name}")
        for dep in services[name].get("depends_on") or {}:
            visit(dep, (*seen, name))
        done.append(name)

    for name in services:
        visit(name, ())
    return done


def _container(project: str, name: str) -> str:
    return f"{project}-{name}"


def _ca_mount() -> list[str]:
    """The host CA bundle at /run/host-ca.crt during builds (pip/npm behind a TLS-inspecting proxy)."""
    bundle = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    return ["-v", f"{bundle}:/run/host-ca.crt:ro"] if Path(bundle).is_file() else []


def _image_exists(image: str) -> bool:
    return _podman("image", "exists", image, check=False, quiet=True).returncode == 0


def _one_shot(services: dict[str, Any]) -> set[str]:
    return {
        dep
        for svc in services.values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"
    }


def _wait_healthy(container: str, svc: dict[str, Any]) -> None:
    hc = svc.get("healthcheck")
    if not hc:
        return
    retries = int(hc.get("retries", 30))
    interval = float(str(hc.get("interval", "2s")).rstrip("s"))
    for _ in range(retries + 1):
        state = _podman("inspect", "-f", "{{.State.Running}}", container, check=False, quiet=True)
        if state.stdout.strip() != "true":
            _podman("logs", "--tail", "30", container, check=False)
            raise SystemExit(f"{container} exited while starting")
        if _podman("healthcheck", "run", container, check=False, quiet=True).returncode == 0:
            return
        time.sleep(interval)
    _podman("logs", "--tail", "30", container, check=False)
    raise SystemExit(f"{container} did not become healthy")


def _mountpoint(project: str, vol: str) -> str:
    return _podman(
        "volume", "inspect", "-f", "{{.Mountpoint}}", f"{project}_{vol}", quiet=True
    ).stdout.strip()


def _host_env(project: str, svc: dict[str, Any]) -> dict[str, str]:
    env = {**os.environ, **{k: str(v) for k, v in (svc.get("environment") or {}).items()}}
    env["FEDGE_DATA_DIR"] = _mountpoint(project, "fedge-data")
    return env


def _host_cmd(project: str, svc: dict[str, Any]) -> list[str]:
    data = _mountpoint(project, "fedge-data")
    cmd = [data if c == DATA else c for c in [*svc.get("entrypoint", []), *svc["command"]]]
    venv = ROOT / ".venv" / "bin"
    if cmd[0] == "python":
        return [str(venv / "python"), *cmd[1:]]
    return [str(venv / cmd[0]), *cmd[1:]]


def _host_running(name: str) -> int | None:
    pidfile = RUN_DIR / f"{name}.pid"
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _host_start(project: str, name: str, svc: dict[str, Any], *, once: bool) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    env, cmd = _host_env(project, svc), _host_cmd(project, svc)
    if once:
        subprocess.run(cmd, env=env, check=True, cwd=ROOT)
        return
    log = (RUN_DIR / f"{name}.log").open("ab")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
    (RUN_DIR / f"{name}.pid").write_text(str(proc.pid))


def _host_wait(name: str, svc: dict[str, Any]) -> None:
    hc = svc["healthcheck"]
    test = hc["test"]
    cmd = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])
    if cmd[0] == "python":
        cmd[0] = str(ROOT / ".venv" / "bin" / "python")
    for _ in range(int(hc.get("retries", 30)) + 1):
        if _host_running(name) is None:
            raise SystemExit(f"{name} (host) exited while starting; see {RUN_DIR / (name + '.log')}")
        if subprocess.run(cmd, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(float(str(hc.get("interval", "2s")).rstrip("s")))
    raise SystemExit(f"{name} (host) did not become healthy; see {RUN_DIR / (name + '.log')}")


def _host_stop(name: str) -> None:
    pid = _host_running(name)
    if pid is not None:
        os.kill(pid, 15)
        for _ in range(100):
            if _host_running(name) is None:
                break
            time.sleep(0.1)
    (RUN_DIR / f"{name}.pid").unlink(missing_ok=True)


def _run_args(project: str, name: str, svc: dict[str, Any], *, detach: bool) -> list[str]:
    args = ["run", "--name", _container(project, name), "--label", f"io.fedge.stack={project}"]
    args += ["-d"] if detach else ["--rm"]
    if svc.get("network_mode") == "host":
        args += ["--network", "host"]
    if svc.get("pid") == "host":
        args += ["--pid", "host"]
    if svc.get("user"):
        args += ["--user", str(svc["user"])]
    if svc.get("entrypoint"):
        args += ["--entrypoint", json.dumps(list(svc["entrypoint"]))]
    env = svc.get("environment") or {}
    items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
    for key, val in items:
        args += ["-e", f"{key}={val}"]
    for vol in svc.get("volumes") or []:
        src, _, rest = vol.partition(":")
        if src.startswith("."):
            src = str((HERE / src).resolve())
        elif "/" not in src:
            src = f"{project}_{src}"
        args += ["-v", f"{src}:{rest}"]
    hc = svc.get("healthcheck")
    if hc:
        test = hc["test"]
        cmd = test[1] if test[0] == "CMD-SHELL" else shlex.join(test[1:])
        args += ["--health-cmd", cmd, "--health-interval", "disable"]
    else:
        args += ["--no-healthcheck"]  # not the image's HEALTHCHECK (podman would want systemd timers)
    args += ["--pull=never", svc["image"]]
    if svc.get("command"):
        args += list(svc["command"])
    return args


def _host_mode(cfg: dict[str, Any]) -> bool:
    return not _image_exists(cfg["services"]["controller"]["image"])


def up(cfg: dict[str, Any], profiles: set[str], build: bool) -> None:
    project = cfg.get("name", "fedge")
    host = _host_mode(cfg)
    if host:
        print("controller image not built: controller and mosquitto-init run from .venv", flush=True)
    services = {
        n: s for n, s in cfg["services"].items() if not s.get("profiles") or set(s["profiles"]) & profiles
    }
    for vol in cfg.get("volumes") or {}:
        if _podman("volume", "exists", f"{project}_{vol}", check=False).returncode != 0:
            _podman("volume", "create", f"{project}_{vol}", quiet=True)
    one_shot = _one_shot(services)
    skipped: set[str] = set()
    for name in _order(services):
        svc = services[name]
        if any(dep in skipped for dep in svc.get("depends_on") or {}):
            print(f"skip {name}: a dependency was skipped", flush=True)
            skipped.add(name)
            continue
        if host and name in HOST_FALLBACK:
            if name in one_shot:
                print(f"{name}: run once (host)", flush=True)
                _host_start(project, name, svc, once=True)
            else:
                if _host_running(name) is None:
                    print(f"{name}: start (host)", flush=True)
                    _host_start(project, name, svc, once=False)
                _host_wait(name, svc)
                print(f"{name}: healthy", flush=True)
            continue
        if host and name == "mosquitto":
            data = _mountpoint(project, "fedge-data")
            svc = {
                **svc,
                "user": "0:0",  # the host controller (root) rendered the files
                "volumes": [*svc["volumes"], f"fedge-data:{data}"],
                "command": ["-c", f"{data}/fleet/mosquitto/mosquitto.conf"],
                "healthcheck": {
                    **svc["healthcheck"],
                    "test": ["CMD-SHELL", f"test -s {data}/fleet/mosquitto/mosquitto.pid"],
                },
            }
        image = svc["image"]
        if svc.get("build") and (build or not _image_exists(image)):
            b = svc["build"]
            ctx = (HERE / b.get("context", ".")).resolve()
            _podman(
                "build",
                "--pull=never",
                *_ca_mount(),
                "-t",
                image,
                "-f",
                str(ctx / b.get("dockerfile", "Dockerfile")),
                str(ctx),
            )
        if not _image_exists(image):
            if svc.get("profiles"):
                print(f"skip {name}: image {image} is not present (no registry here)", flush=True)
                skipped.add(name)
                continue
            raise SystemExit(f"{name}: image {image} is not present (build it: make images)")
        container = _container(project, name)
        running = _podman("inspect", "-f", "{{.State.Running}}", container, check=False, quiet=True)
        if running.stdout.strip() == "true":
            print(f"{name}: already running", flush=True)
        elif name in one_shot:
            print(f"{name}: run once", flush=True)
            _podman(*_run_args(project, name, svc, detach=False))
        else:
            _podman("rm", "-f", container, check=False, quiet=True)
            print(f"{name}: start", flush=True)
            _podman(*_run_args(project, name, svc, detach=True), quiet=True)
        if name not in one_shot:
            _wait_healthy(container, svc)
            print(f"{name}: healthy", flush=True)


def down(cfg: dict[str, Any], volumes: bool) -> None:
    project = cfg.get("name", "fedge")
    for name in reversed(_order(cfg["services"])):
        if name in HOST_FALLBACK:
            _host_stop(name)
        _podman("rm", "-f", "-t", "10", _container(project, name), check=False, quiet=True)
    if volumes:
        for vol in cfg.get("volumes") or {}:
            _podman("volume", "rm", "-f", f"{project}_{vol}", check=False, quiet=True)


def restart(cfg: dict[str, Any], name: str) -> None:
    project = cfg.get("name", "fedge")
    if name in HOST_FALLBACK and _host_mode(cfg):
        _host_stop(name)
        _host_start(project, name, cfg["services"][name], once=False)
        _host_wait(name, cfg["services"][name])
        return
    _podman("restart", "-t", "10", _container(project, name), quiet=True)
    _wait_healthy(_container(project, name), cfg["services"][name])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    u.add_argument("--profile", action="append", default=[])
    u.add_argument("--build", action="store_true", help="rebuild images that have a build section")
    d = sub.add_parser("down")
    d.add_argument("--volumes", action="store_true")
    r = sub.add_parser("restart")
    r.add_argument("service")
    sub.add_parser("ps")
    args = p.parse_args(argv)
    cfg = load()
    if args.cmd == "up":
        up(cfg, set(args.profile), args.build)
    elif args.cmd == "down":
        down(cfg, args.volumes)
    elif args.cmd == "restart":
        restart(cfg, args.service)
    else:
        _podman("ps", "-a", "--filter", f"label=io.fedge.stack={cfg.get('name', 'fedge')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
