"""``fedge-agent``: the on-device agent's command line (enroll, run, status, privacy, facts, version, grid
run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edge_agent import __version__
from edge_agent.facts import hardware_facts

if TYPE_CHECKING:
    from edge_agent.api import LocalApi
    from edge_agent.config import AgentSettings
    from edge_agent.identity import DeviceIdentity
    from edge_agent.link.client import ControllerLink
    from edge_agent.link.outbox import Outbox
    from edge_agent.process import Service
    from edge_agent.runtime.session import ModelRuntime

app = typer.Typer(help="fedge edge agent.", no_args_is_help=True)
StateDir = Annotated[Path, typer.Option("--state-dir", envvar="FEDGE_AGENT_STATE_DIR", help="agent state")]
ControllerCa = Annotated[
    Path | None,
    typer.Option(
        "--controller-ca",
        envvar="FEDGE_AGENT_CONTROLLER_CA",
        help="PEM CA the controller's TLS certificate must chain to (pinned; kept from enrollment)",
    ),
]
LogFormatOpt = Annotated[
    str | None, typer.Option("--log-format", help="text (default) or json (FEDGE_AGENT_LOG_FORMAT)")
]


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
    controller_ca: ControllerCa = None,
) -> None:
    """Make a device key here, enroll with a one-time token, store the credentials (0600)."""
    from edge_agent.identity import EnrollmentError
    from edge_agent.identity import enroll as do_enroll
    from edge_agent.tls import controller_verify, pin_controller_ca
    from fedge_common.tls import TlsConfigError

    try:
        verify = controller_verify(state_dir, controller_ca)
        identity = do_enroll(controller, token, state_dir, _labels(label or []), verify=verify)
        if controller_ca is not None:  # later runs pin the same CA
            pin_controller_ca(state_dir, controller_ca)
    except (EnrollmentError, TlsConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"device_id": identity.device_id, "state_dir": str(state_dir)}))


@app.command()
def run(
    state_dir: StateDir,
    api_port: Annotated[int | None, typer.Option("--api-port", help="local inference API port")] = None,
    poll_interval: Annotated[float | None, typer.Option(help="seconds between polls")] = None,
    controller_ca: ControllerCa = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Serve the local inference API and reconcile the desired state until stopped."""
    from edge_agent.config import AgentSettings
    from edge_agent.identity import DeviceIdentity, EnrollmentError
    from edge_agent.link.client import ControllerLink
    from edge_agent.link.outbox import Outbox
    from edge_agent.process import AgentProcess, ServiceError
    from edge_agent.tls import controller_verify
    from fedge_common import logs
    from fedge_common.tls import TlsConfigError

    overrides: dict[str, object] = {"state_dir": state_dir}
    if controller_ca is not None:
        overrides["controller_ca"] = controller_ca
    if log_format is not None:
        if log_format not in logs.FORMATS:
            raise typer.BadParameter("text or json", param_hint="--log-format")
        overrides["log_format"] = log_format
    if api_port is not None:
        overrides["api_port"] = api_port
    if poll_interval is not None:
        overrides["poll_interval"] = poll_interval
    settings = AgentSettings(**overrides)  # type: ignore[arg-type]
    logs.configure(settings.log_format)
    try:
        identity = DeviceIdentity.load(settings.state_dir)
        verify = controller_verify(settings.state_dir, settings.controller_ca)
    except (EnrollmentError, TlsConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    logs.set_process_fields(device_id=identity.device_id)
    link = ControllerLink(identity, timeout=settings.http_timeout, ttl=settings.token_ttl, verify=verify)
    outbox = Outbox.in_state_dir(settings.state_dir)
    try:
        services, api = _agent_services(settings, identity, link, outbox)
        process = AgentProcess(services)
        process.install_signal_handlers()
        process.run(ready=lambda: typer.echo(f"device {identity.device_id}: local API on {api.url}"))
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        outbox.close()
        link.close()


def _runtime(settings: AgentSettings) -> ModelRuntime:
    """The model runtime; metered (edge_agent.metrics) unless FEDGE_AGENT_METRICS=false or
    prometheus-client is missing."""
    from edge_agent.monitor.metrics import prometheus_available
    from edge_agent.runtime.session import ModelRuntime

    if not settings.metrics or prometheus_available() is not None:
        return ModelRuntime(settings.providers)
    from edge_agent.metrics import DeviceMetrics, MeteredRuntime

    return MeteredRuntime(settings.providers, DeviceMetrics())


def _agent_services(
    settings: AgentSettings, identity: DeviceIdentity, link: ControllerLink, outbox: Outbox
) -> tuple[list[Service], LocalApi]:
    """The services of ``fedge-agent run``, in start order (stopped in reverse): the deploy loop
    (recovers, serves the current model, reconciles), the local API, the MQTT link (when the device has
    a broker), the FL SuperNode (when ``FEDGE_AGENT_FL_ENABLED``: a child process while the device is in
    a job; its rounds hold the update lock), the command worker (holds the update lock while a grid run
    runs; routes fl-join/fl-leave to the SuperNode)."""
    from edge_agent.api import LocalApi
    from edge_agent.deploy.agent import Agent, DeployLoop
    from edge_agent.grid import CommandRunner
    from edge_agent.lifecycle import Lifecycle
    from edge_agent.link.mqtt import MqttLink
    from edge_agent.runtime.hooks import InferenceService

    lifecycle = Lifecycle(  # revocation (persisted) and certificate renewal
        settings.state_dir,
        keep_serving_when_revoked=settings.keep_serving_when_revoked,
        renew_fraction=settings.cert_renew_fraction,
        renew_retry_seconds=settings.cert_renew_retry,
    )
    agent = Agent(settings.state_dir, link, _runtime(settings), outbox=outbox, lifecycle=lifecycle)
    metrics = getattr(agent.runtime, "metrics", None)  # edge_agent.metrics: GET /metrics
    if metrics is not None:
        from edge_agent.metrics import hook

        hook(metrics, agent, outbox)
    inference = InferenceService.from_paths(agent.runtime, settings.preprocess, settings.postprocess)
    supernode = None
    if settings.fl_enabled:
        from edge_agent.learning.supernode import DeviceData, SupernodeService

        supernode = SupernodeService(
            settings.state_dir,
            DeviceData.from_settings(settings),
            record=agent.record_telemetry,
            update_lock=agent.update_lock,
        )
    agent.commands = CommandRunner(
        settings.state_dir, link, agent.record_telemetry, agent.update_lock, fl=supernode
    )
    if metrics is not None and supernode is not None:  # the FL client's gauges on GET /metrics
        metrics.fl_status = supernode.status
    from edge_agent.online.service import online_from_settings

    online = online_from_settings(settings)  # FEDGE_AGENT_ONLINE_CONFIG: /v1/online, sensor feeds
    api = LocalApi(
        agent.runtime,
        settings.api_host,
        settings.api_port,
        inference,
        online.routes() if online else None,
        lifecycle=lifecycle,
    )
    services: list[Service] = [DeployLoop(agent, settings.poll_interval, settings.max_backoff), api]
    if online is not None:
        services.insert(1, online)  # learners resumed before the API serves them
    from edge_agent.monitor.service import monitor_from_settings

    monitor = monitor_from_settings(
        settings, agent.runtime, link, agent.record_telemetry, metrics.metrics if metrics else None
    )
    if monitor is None and metrics is not None:  # GET /metrics without the monitor
        from edge_agent.metrics import MetricsService

        host, port = settings.metrics_host, settings.metrics_port
        services.insert(1, MetricsService(metrics, settings.state_dir, host, port))
    if monitor is not None:  # inference -> bounded queue -> drift, metrics (GET /metrics), events
        inference.observer = monitor.observer
        services.insert(1, monitor)
        for learner in online.learners.values() if online is not None else ():
            monitor.watch_learner(learner)  # prequential (y_true, y_pred): ME/MAE/MAPE/bias, ADWIN/PH
    if settings.mqtt and identity.broker_url and not lifecycle.revoked:
        agent.mqtt = MqttLink(
            identity,
            settings.state_dir,
            agent.push_desired,
            on_connect=agent.wake,
            min_backoff=settings.mqtt_min_backoff,
            max_backoff=settings.mqtt_max_backoff,
            token_ttl=settings.token_ttl,
            on_infer=inference.handle,
            on_command=agent.receive_command,
        )
        services.append(agent.mqtt)
        mqtt_link = agent.mqtt
        lifecycle.on_revoked(mqtt_link.stop)  # a revoked device stops reconnecting to the broker
        lifecycle.on_renewed(lambda: mqtt_link.reload_certificate(settings.state_dir))
    if supernode is not None:
        services.append(supernode)
    services.append(agent.commands)
    return services, api


@app.command()
def status(state_dir: StateDir) -> None:
    """Print identity, active/previous model, the last desired state, the FL SuperNode and the revocation
    marker, if any (JSON)."""
    from edge_agent.deploy.slots import SlotStore
    from edge_agent.identity import REVOKED_FILE
    from edge_agent.learning.supernode import read_status

    meta_path = state_dir / "identity.json"
    slots = SlotStore(state_dir)
    desired_path = state_dir / "desired.json"
    out = {
        "identity": json.loads(meta_path.read_text()) if meta_path.exists() else None,
        "current": slots.read("current"),
        "previous": slots.read("previous"),
        "failed": slots.read("failed"),
        "desired": json.loads(desired_path.read_text()) if desired_path.exists() else None,
        "supernode": read_status(state_dir),
        "revoked": json.loads(revoked.read_text())
        if (revoked := state_dir / REVOKED_FILE).exists()
        else None,
    }
    typer.echo(json.dumps(out, indent=2))


@app.command()
def privacy(state_dir: StateDir) -> None:
    """Print the device's privacy ledgers (JSON): per dataset the budget, epsilon spent, reserved and
    remaining, and per job its rounds and epsilon. The budget of the configured dataset is the device's
    setting (FEDGE_AGENT_FL_PRIVACY_BUDGET)."""
    from edge_agent.config import AgentSettings
    from edge_agent.learning.join import privacy_report
    from edge_agent.learning.supernode import DeviceData

    settings = AgentSettings(state_dir=state_dir)
    typer.echo(json.dumps(privacy_report(state_dir, DeviceData.from_settings(settings)), indent=2))


grid_app = typer.Typer(help="Grid simulator and RL load shifting on this device (extra: grid).")
app.add_typer(grid_app, name="grid")

from edge_agent.online.cli import online_app  # noqa: E402 - beside its add_typer

app.add_typer(online_app, name="online")


def _policy_ref(text: str) -> tuple[str, int | None]:
    model_id, sep, version = text.partition("@")
    if not model_id:
        raise typer.BadParameter("give MODEL_ID or MODEL_ID@VERSION", param_hint="--policy")
    if not sep:
        return model_id, None
    try:
        number = int(version)
    except ValueError:
        number = 0
    if number < 1:
        raise typer.BadParameter(f"version {version!r} is not a positive integer", param_hint="--policy")
    return model_id, number


@grid_app.command("run")
def grid_run(
    state_dir: StateDir,
    policy: Annotated[str, typer.Option("--policy", help="registered grid policy: MODEL_ID[@VERSION]")],
    days: Annotated[str, typer.Option(help="test, train, all, or e.g. 152,160-165")] = "test",
) -> None:
    """Run the grid simulator here with a registered policy (downloaded, SHA-256 checked against the
    chain record); per-day shifts and SCR/SSR go to the controller as telemetry (via the outbox)."""
    from edge_agent.config import AgentSettings
    from edge_agent.deploy.agent import Agent
    from edge_agent.grid import grid_available, run_command
    from edge_agent.identity import DeviceIdentity, EnrollmentError
    from edge_agent.link.client import ControllerLink, LinkError
    from edge_agent.link.outbox import Outbox
    from fedge_protocol import CommandKind, CommandState, TelemetryType

    missing = grid_available()
    if missing is not None:
        typer.echo(f"error: {missing}", err=True)
        raise typer.Exit(1)
    model_id, version = _policy_ref(policy)
    settings = AgentSettings(state_dir=state_dir)
    try:
        identity = DeviceIdentity.load(settings.state_dir)
    except EnrollmentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    link = ControllerLink(identity, timeout=settings.http_timeout, ttl=settings.token_ttl)
    outbox = Outbox.in_state_dir(settings.state_dir)
    agent = Agent(settings.state_dir, link, outbox=outbox)  # no broker here: the outbox drains over HTTP
    try:
        try:
            payload = link.request_command(
                {"kind": CommandKind.GRID_RUN, "model_id": model_id, "version": version, "days": days}
            )
        except LinkError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc

        errors: list[str] = []

        def record(body: dict[str, Any]) -> int:
            seq = agent.record_telemetry(body)
            if body.get("type") == TelemetryType.GRID_DAY:
                typer.echo(
                    f"day {body['day']}: (SCR+SSR)/2 {body['before']['score']:.4f} -> "
                    f"{body['after']['score']:.4f} ({body['shifted']} shifts)"
                )
            elif body.get("state") == CommandState.FAILED:
                errors.append(str(body.get("error")))
            agent.flush()
            return seq

        model = payload["model"]
        typer.echo(f"command {payload['command_id']}: model {model['model_id']} v{model['version']}")
        summary = run_command(payload, link, settings.state_dir, record)
        left = len(outbox)
        if left:
            typer.echo(f"{left} record(s) wait in the outbox; the agent delivers them when the link is back")
        if summary is None:
            typer.echo(f"error: {'; '.join(errors) or 'the grid run failed'}", err=True)
            raise typer.Exit(1)
        typer.echo(json.dumps(summary))
    finally:
        outbox.close()
        link.close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
