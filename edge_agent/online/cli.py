"""``fedge-agent online list | status NAME | explain NAME``: the running agent's learners, read from its
local API (``FEDGE_AGENT_API_HOST`` / ``FEDGE_AGENT_API_PORT``, or ``--api-url``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

online_app = typer.Typer(
    help="Online learners of the running agent (via its local API).", no_args_is_help=True
)

ApiUrl = Annotated[
    str | None, typer.Option("--api-url", help="the agent's local API (default: from FEDGE_AGENT_API_*)")
]


def _base(api_url: str | None) -> str:
    if api_url:
        return api_url.rstrip("/")
    host = os.environ.get("FEDGE_AGENT_API_HOST", "127.0.0.1")
    port = os.environ.get("FEDGE_AGENT_API_PORT", "8470")
    return f"http://{host}:{port}"


def _call(method: str, api_url: str | None, path: str, body: bytes | None = None) -> dict[str, Any]:
    import httpx

    url = _base(api_url) + path
    try:
        resp = httpx.request(method, url, content=body, timeout=30.0)
    except httpx.HTTPError as exc:
        typer.echo(f"error: the agent's local API at {_base(api_url)} does not answer: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        data: dict[str, Any] = resp.json()
    except ValueError:
        data = {"detail": resp.text[:200]}
    if resp.status_code >= 400:
        typer.echo(f"error: {resp.status_code} {data.get('title', '')}: {data.get('detail')}", err=True)
        raise typer.Exit(1)
    return data


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


@online_app.command("list")
def list_learners(
    api_url: ApiUrl = None, as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False
) -> None:
    """One line per learner: state, samples seen, last loss, last saved version, drift."""
    learners = _call("GET", api_url, "/v1/online")["learners"]
    if as_json:
        typer.echo(json.dumps(learners, indent=2))
        return
    typer.echo(
        f"{'NAME':<20} {'BACKEND':<8} {'STATE':<11} {'SAMPLES':>8} {'LOSS':>10} {'VERSION':>7} "
        f"{'REJECTED':>8}  DRIFT"
    )
    for s in learners:
        drift = s.get("drift")
        drift_text = (
            "-"
            if drift is None
            else str(drift.get("status", drift))
            if isinstance(drift, dict)
            else str(drift)
        )
        typer.echo(
            f"{s['name']:<20} {s['backend']:<8} {s['state']:<11} {s['samples_seen']:>8} "
            f"{_number(s['loss']):>10} {_number(s['last_saved_version']):>7} "
            f"{sum(s['rejected'].values()):>8}  {drift_text}"
        )


@online_app.command("status")
def learner_status(name: str, api_url: ApiUrl = None) -> None:
    """A learner's whole status (JSON): counters, losses, last evaluation and saved version, queue, drift."""
    typer.echo(json.dumps(_call("GET", api_url, f"/v1/online/{name}"), indent=2))


@online_app.command("explain")
def explain(
    name: str,
    message: Annotated[
        str, typer.Option("--input", help="the message as JSON, or @file; {} for the latest")
    ] = "{}",
    api_url: ApiUrl = None,
) -> None:
    """Per-feature attributions for one message (JSON)."""
    body = Path(message[1:]).read_bytes() if message.startswith("@") else message.encode()
    typer.echo(json.dumps(_call("POST", api_url, f"/v1/online/{name}/explain", body), indent=2))
