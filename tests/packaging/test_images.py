"""The images of `make images` (marker ``stack``; `make test-images`): a controller container on embedded
defaults with its data in a volume, an agent container enrolled through the controller's API with a
one-time token, a model deployed to it, and an inference from the agent container's local API, all on the
host's loopback (host network). Images are built with `make images` when one is missing, else reused."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import ADMIN, add_model, deploy, enrollment_token, upload_onnx

ROOT = Path(__file__).resolve().parents[2]
PODMAN = [str(ROOT / "packaging/images/podman.sh")]
IMAGES = ("localhost/fedge-controller:dev", "localhost/fedge-agent:dev", "localhost/fedge-agent-cuda:dev")
ADMIN_TOKEN = ADMIN["Authorization"].removeprefix("Bearer ")

pytestmark = pytest.mark.stack


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def images() -> tuple[str, ...]:
    if any(_podman("image", "exists", image).returncode != 0 for image in IMAGES):
        subprocess.run(["make", "images"], cwd=ROOT, check=True, timeout=1800)
    return IMAGES


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Containers and volumes the test creates; all removed afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        if name.startswith("ctr:"):
            _podman("rm", "--force", "--time", "5", name[4:])
    for name in made:
        if name.startswith("vol:"):
            _podman("volume", "rm", "--force", name[4:])


def _wait_http(url: str, container: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                logs = _podman("logs", container).stdout + _podman("logs", container).stderr
                raise AssertionError(f"{url} never answered; {container} logs:\n{logs[-3000:]}") from None
            time.sleep(0.5)


def test_images_run_as_non_root_with_their_entrypoints(images: tuple[str, ...]) -> None:
    for image in images:
        inspected = json.loads(_podman("image", "inspect", image).stdout)[0]
        config = inspected["Config"]
        assert config["User"] not in ("", "root", "0")
        assert config["Entrypoint"][0] in ("fedge-controller", "fedge-agent")
        assert "/healthz" in " ".join(inspected["Healthcheck"]["Test"])


def test_agent_image_is_agent_only_and_fedge_controller_names_the_extra(images: tuple[str, ...]) -> None:
    _, agent_image, _ = images
    done = _podman(
        "run", "--rm", "--network", "host", "--entrypoint", "fedge-controller", agent_image, "serve"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pip install 'fedge[controller]'" in done.stderr and "Traceback" not in done.stderr, done.stderr
    listed = _podman("run", "--rm", "--entrypoint", "pip", agent_image, "list", "--format", "freeze")
    installed = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert {"fedge", "onnxruntime", "paho-mqtt"} <= installed
    assert not installed & {"torch", "fastapi", "web3", "uvicorn", "sqlalchemy"}, installed


def test_controller_and_agent_containers_deploy_and_infer_on_loopback(
    images: tuple[str, ...], names: list[str]
) -> None:
    controller_image, agent_image, _ = images
    run_id = uuid.uuid4().hex[:8]
    ctl, agent = f"fedge-it-ctl-{run_id}", f"fedge-it-agent-{run_id}"
    ctl_vol, agent_vol = f"fedge-it-data-{run_id}", f"fedge-it-agent-{run_id}"
    names += [f"vol:{ctl_vol}", f"vol:{agent_vol}", f"ctr:{ctl}", f"ctr:{agent}"]
    port, broker_port, agent_port = _free_port(), _free_port(), _free_port()
    started = _podman(
        "run", "-d", "--name", ctl, "--network", "host", "--no-healthcheck",
        "-v", f"{ctl_vol}:/var/lib/fedge",
        "-e", "FEDGE_HOST=127.0.0.1", "-e", f"FEDGE_PORT={port}",
        "-e", "FEDGE_BROKER_HOST=127.0.0.1", "-e", f"FEDGE_BROKER_PORT={broker_port}",
        "-e", f"FEDGE_ADMIN_TOKEN={ADMIN_TOKEN}",
        controller_image,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/healthz", ctl)

    with httpx.Client(base_url=url, timeout=30) as http:
        token = enrollment_token(http, {"site": "container"})
        enrolled = _podman(
            "run", "--rm", "--network", "host", "-v", f"{agent_vol}:/var/lib/fedge-agent", agent_image,
            "enroll", "--controller", url, "--token", token, "--state-dir", "/var/lib/fedge-agent",
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
        started = _podman(
            "run", "-d", "--name", agent, "--network", "host", "--no-healthcheck",
            "-v", f"{agent_vol}:/var/lib/fedge-agent",
            "-e", "FEDGE_AGENT_API_HOST=127.0.0.1", "-e", f"FEDGE_AGENT_API_PORT={agent_port}",
            agent_image, "run", "--state-dir", "/var/lib/fedge-agent", "--poll-interval", "0.5",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        devices = http.get("/v1/devices", headers=ADMIN).json()
        rows = devices["items"] if isinstance(devices, dict) else devices
        device_id = next(d["id"] for d in rows if d["labels"].get("site") == "container")
        model_id, version = upload_onnx(http, add_model(2.0))
        deploy(http, model_id, version, [device_id])

        base = f"http://127.0.0.1:{agent_port}"
        _wait_http(f"{base}/healthz", agent)
        deadline = time.monotonic() + 90
        while True:
            try:
                info = json.load(urllib.request.urlopen(f"{base}/v1/model", timeout=2))
                if (info.get("model_id"), info.get("version")) == (model_id, version):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    "agent never served the model:\n" + _podman("logs", agent).stderr[-3000:]
                )
            time.sleep(0.5)
        req = urllib.request.Request(
            f"{base}/v1/infer", data=json.dumps({"inputs": {"x": [[0, 1, 2, 3]]}}).encode()
        )
        assert json.load(urllib.request.urlopen(req, timeout=10))["outputs"] == {"y": [[2.0, 3.0, 4.0, 5.0]]}
        row = http.get(f"/v1/devices/{device_id}", headers=ADMIN).json()
        assert row["labels"] == {"site": "container"}

    # the controller kept its data in the volume: the database is there
    listed = _podman("run", "--rm", "--network", "host", "-v", f"{ctl_vol}:/data", "--entrypoint", "ls",
                     controller_image, "/data")  # fmt: skip
    assert "fedge.db" in listed.stdout, listed.stdout + listed.stderr
