"""``fedge-agent``: the on-device agent's command line."""

from __future__ import annotations

import json

import typer

from edge_agent import __version__
from edge_agent.facts import hardware_facts

app = typer.Typer(help="fedge edge agent.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


@app.command()
def facts() -> None:
    """Print the hardware facts this device would report at enrollment (JSON)."""
    typer.echo(json.dumps(hardware_facts(), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
