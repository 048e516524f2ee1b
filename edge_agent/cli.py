"""``fedge-agent``: the on-device agent's command line (enroll, run, status, facts, version)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from edge_agent import __version__
from edge_agent.facts import hardware_facts

app = typer.Typer(help="fedge edge agent.", no_args_is_help=True)
StateDir = Annotated[Path, typer.Option("--state-dir", envvar="FEDGE_AGENT_STATE_DIR", help="agent state")]


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


@app.command()
def facts() -> None:
    """Print the hardware facts this device would report at enrollment (JSON)."""
    typer.echo(json.dumps(hardware_facts(), indent=2))


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"label '{pair}' is not k=v", param_hint="--label")
        labels[key] = value
    return labels


@app.command()
def enroll(
    controller: Annotated[str, typer.Option("--controller", help="controller URL")],
    token: Annotated[str, typer.Option("--token", help="one-time enrollment token")],
    state_dir: StateDir,
    label: Annotated[list[str] | None, typer.Option("--label", help="k=v (repeatable)")] = None,
) -> None:
    """Make a device key here, enroll with a one-time token, store the credentials (0600)."""
    from edge_agent.identity import EnrollmentError
    from edge_agent.identity import enroll as do_enroll

    try:
        identity = do_enroll(controller, token, state_dir, _labels(label or []))
    except EnrollmentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"device_id": identity.device_id, "state_dir": str(state_dir)}))


@app.command()
def run(
    state_dir: StateDir,
    api_port: Annotated[int | None, typer.Option("--api-port", help="local inference API port")] = None,
    poll_interval: Annotated[float | None, typer.Option(help="seconds between polls")] = None,
) -> None:
    """Serve the local inference API and reconcile the desired state until stopped."""
    from edge_agent.api import make_server, serve_in_thread
    from edge_agent.config import AgentSettings
    from edge_agent.deploy.agent import Agent
    from edge_agent.identity import DeviceIdentity
    from edge_agent.link.client import ControllerLink
    from edge_agent.link.mqtt import MqttLink
    from edge_agent.link.outbox import Outbox
    from edge_agent.runtime.hooks import InferenceService
    from edge_agent.runtime.session import ModelRuntime

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, object] = {"state_dir": state_dir}
    if api_port is not None:
        overrides["api_port"] = api_port
    if poll_interval is not None:
        overrides["poll_interval"] = poll_interval
    settings = AgentSettings(**overrides)  # type: ignore[arg-type]
    identity = DeviceIdentity.load(settings.state_dir)
    link = ControllerLink(identity, timeout=settings.http_timeout, ttl=settings.token_ttl)
    outbox = Outbox.in_state_dir(settings.state_dir)
    agent = Agent(settings.state_dir, link, ModelRuntime(settings.providers), outbox=outbox)
    service = InferenceService.from_paths(agent.runtime, settings.preprocess, settings.postprocess)
    if settings.mqtt and identity.broker_url:
        agent.mqtt = MqttLink(
            identity,
            settings.state_dir,
            agent.push_desired,
            on_connect=agent.wake,
            min_backoff=settings.mqtt_min_backoff,
            max_backoff=settings.mqtt_max_backoff,
            token_ttl=settings.token_ttl,
            on_infer=service.handle,
        )
        agent.mqtt.start()
    agent.start()
    server = make_server(agent.runtime, settings.api_host, settings.api_port, service)
    serve_in_thread(server)
    typer.echo(f"device {identity.device_id}: local API on http://{settings.api_host}:{server.server_port}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        agent.run(stop, settings.poll_interval, settings.max_backoff)
    finally:
        server.shutdown()
        if agent.mqtt is not None:
            agent.mqtt.stop()
        outbox.close()
        link.close()


@app.command()
def status(state_dir: StateDir) -> None:
    """Print identity, active/previous model and the last desired state (JSON)."""
    from edge_agent.deploy.slots import SlotStore

    meta_path = state_dir / "identity.json"
    slots = SlotStore(state_dir)
    desired_path = state_dir / "desired.json"
    out = {
        "identity": json.loads(meta_path.read_text()) if meta_path.exists() else None,
        "current": slots.read("current"),
        "previous": slots.read("previous"),
        "failed": slots.read("failed"),
        "desired": json.loads(desired_path.read_text()) if desired_path.exists() else None,
    }
    typer.echo(json.dumps(out, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
