"""``fedge-controller``: serve the API and run admin tasks."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from controller.config import ControllerSettings

if TYPE_CHECKING:
    from controller.state import ControllerState

app = typer.Typer(
    help="fedge controller: serve the REST API and administer it. Add --debug for tracebacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _build(settings: ControllerSettings) -> ControllerState:
    from controller.state import build_state

    return build_state(settings)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (FEDGE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (FEDGE_PORT)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    log_format: Annotated[str, typer.Option(help="log lines: text or json (one object a line)")] = "text",
    tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this PEM certificate")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the certificate's PEM key")] = None,
    proxy_headers: Annotated[
        bool, typer.Option(help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips (docs/tls.md)")
    ] = True,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(help="proxies trusted for X-Forwarded-* (default: $FORWARDED_ALLOW_IPS, 127.0.0.1)"),
    ] = None,
) -> None:
    """Run the controller (embedded defaults under FEDGE_DATA_DIR unless configured)."""
    import uvicorn

    from controller.app import create_app
    from fedge_common import logs
    from fedge_common.tls import TlsConfigError, check_server_pair

    if log_format not in logs.FORMATS:
        raise typer.BadParameter("text or json", param_hint="--log-format")
    logs.configure(log_format, log_level)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-cert/--tls-key")
    if tls_cert is not None and tls_key is not None:
        try:
            check_server_pair(tls_cert, tls_key)
        except TlsConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    settings = ControllerSettings()
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    state = _build(settings)
    if state.generated_admin_token:
        sys.stderr.write(
            "\n  First start: admin token (shown once, only its hash is stored):\n"
            f"    {state.generated_admin_token}\n"
            "  Rotate it with `fedge-controller admin-token`.\n\n"
        )
        sys.stderr.flush()
        state.generated_admin_token = None
    scheme = "https" if tls_cert is not None else "http"
    typer.echo(
        f"fedge controller on {scheme}://{settings.host}:{settings.port} (data in {settings.data_dir})",
        err=True,
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler it found:
    # this one, so the state is closed (job workers, the broker, the FL SuperLink the controller
    # supervises, which would outlive it) before the process ends by that signal as before.
    stopped_by: list[int] = []

    def _stopped(signum: int, _frame: FrameType | None) -> None:
        stopped_by.append(signum)
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.run(
            create_app(state),
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            log_config=None,  # fedge_common.logs configured the loggers (access lines included)
            ssl_certfile=str(tls_cert) if tls_cert is not None else None,
            ssl_keyfile=str(tls_key) if tls_key is not None else None,
            proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips,
        )
    except SystemExit:
        if not stopped_by:
            raise
    finally:  # also after SIGINT (KeyboardInterrupt) and a start that failed
        state.close()
        signal.signal(signal.SIGTERM, previous)
    if stopped_by:
        signal.raise_signal(signal.SIGTERM)


@app.command("admin-token")
def admin_token() -> None:
    """Revoke the bootstrap admin token and print a new one (shown once)."""
    from controller.db.session import make_engine, migrate, session_factory
    from controller.security import tokens

    settings = ControllerSettings()
    if settings.database_url is None and not settings.data_dir.is_dir():
        typer.echo(
            f"error: no controller data in {settings.data_dir}: run `fedge-controller serve` there once, "
            "or set FEDGE_DATA_DIR (or FEDGE_DATABASE_URL) to the controller's",
            err=True,
        )
        raise typer.Exit(1)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    with session_factory(engine).begin() as s:
        plaintext = tokens.rotate_admin(s)
    engine.dispose()
    typer.echo(plaintext)


@app.command()
def migrate_db() -> None:
    """Apply database migrations and exit."""
    from controller.db.session import make_engine, migrate

    settings = ControllerSettings()
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    engine.dispose()
    typer.echo("database is at the newest schema")


def main() -> None:
    """Failures are one line (exit 1), usage errors exit 2; ``--debug`` shows the traceback."""
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv = [a for a in sys.argv if a != "--debug"]
    try:
        app()
    except ModuleNotFoundError as exc:
        if debug:
            raise
        typer.echo(
            f"error: fedge-controller needs the controller extra (missing module {exc.name!r}): "
            "pip install 'fedge[controller]'",
            err=True,
        )
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
