"""``fedge grid ...``: simulate a day, train and evaluate the load-shifting optimizer.

The lead mounts :data:`app` under the user CLI; ``python -m simulator.grid.cli`` runs it directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from simulator.grid.errors import GridError, PolicyError

app = typer.Typer(help="UC9 grid simulator and RL load-shifting optimizer.", no_args_is_help=True)
console = Console()


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except GridError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from exc


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _model() -> Any:
    from simulator.grid.model import GridModel

    return GridModel()


@app.command()
def shares() -> None:
    """Every load's annual energy and share; the controllable loads (top 3 domestic, top 4 industrial)."""
    from simulator.grid.model import describe_shares

    with _errors():
        for line in describe_shares(_model()):
            console.print(line, highlight=False)


@app.command()
def simulate(
    day: Annotated[int, typer.Option("--day", help="Day of 2016 (0..365).")],
    out: Annotated[Path, typer.Option(help="Folder for the PNG plot.")] = Path("grid-out"),
    policy: Annotated[
        str | None, typer.Option(help="Also shift demand: a policy folder or 'heuristic'.")
    ] = None,
    reference: Annotated[
        bool, typer.Option(help="Solve with pandapower.runpp instead of the fast solver.")
    ] = False,
) -> None:
    """Simulate one day (96 x 15 min) and print SCR, SSR and (SCR+SSR)/2; save a plot."""
    from simulator.grid.evaluate import run_episode
    from simulator.grid.plots import plot_day, plot_episode
    from simulator.grid.simulation import DaySimulation

    with _errors():
        model = _model()
        model.check_day(day)
        solver = model.reference_solver() if reference else model.fast_solver()
        sim = DaySimulation(model, day, solver)
        metrics = sim.metrics()
        table = Table(title=f"day {day} ({solver.name})")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for key, value in metrics.as_dict().items():
            table.add_row(key, f"{value:.4f}")
        console.print(table)
        if policy is None:
            path = plot_day(out / f"day_{day:03d}.png", day, sim.load_total(), sim.generation())
        else:
            chosen = _load_policy(policy)
            env = _env_for(model, chosen, (day,))
            result = run_episode(env, chosen, day)
            console.print(
                f"after {env.actions_per_day} shifts by {chosen.name}: "
                f"(SCR+SSR)/2 {result.before.score:.4f} -> {result.after.score:.4f}"
            )
            path = plot_episode(out / f"day_{day:03d}_{chosen.name}.png", result)
        console.print(f"plot: {path}")


def _load_policy(spec: str) -> Any:
    from simulator.grid.policies import PvPeakHeuristic
    from simulator.grid.rl import load_policy

    if spec == "heuristic":
        return PvPeakHeuristic()
    return load_policy(Path(spec))


def _env_for(model: Any, policy: Any, days: tuple[int, ...], actions_per_day: int | None = None) -> Any:
    from simulator.grid.env import DEFAULT_ACTIONS_PER_DAY, LoadShiftEnv
    from simulator.grid.onnx_policy import OnnxPolicy
    from simulator.grid.rl import TrainedPolicy, check_compatible, make_env

    if isinstance(policy, TrainedPolicy | OnnxPolicy):
        env = make_env(model, policy.info, days)
        check_compatible(policy.info, env)
        return env
    return LoadShiftEnv(model, days=days, actions_per_day=actions_per_day or DEFAULT_ACTIONS_PER_DAY)


@app.command()
def train(
    algo: Annotated[str, typer.Option(help="ppo or dqn (Stable-Baselines3).")] = "ppo",
    timesteps: Annotated[int, typer.Option(help="Environment steps to train for.")] = 300_000,
    out: Annotated[Path, typer.Option(help="Policy folder to write.")] = Path("runs/grid/ppo"),
    seed: Annotated[int, typer.Option()] = 0,
    actions_per_day: Annotated[int, typer.Option(help="Shifts per episode (one day).")] = 288,
    n_envs: Annotated[int, typer.Option(help="Environments stepped together.")] = 4,
    backend: Annotated[str, typer.Option(help="RL backend.")] = "sb3",
    onnx: Annotated[bool, typer.Option(help="Also export policy.onnx.")] = True,
    hyper: Annotated[
        list[str] | None, typer.Option("--set", help="Hyperparameter override KEY=VALUE (JSON value).")
    ] = None,
    demonstrations: Annotated[
        int, typer.Option(help="PPO: behaviour-clone this many boundary-rule episodes first (0: pure RL).")
    ] = 0,
    actions: Annotated[str, typer.Option(help="auto, multi (MultiDiscrete) or flat (Discrete).")] = "auto",
    bc_epochs: Annotated[int, typer.Option(help="Behaviour-cloning epochs over the demonstrations.")] = 30,
    network: Annotated[
        str, typer.Option(help="mlp (SB3 MlpPolicy) or shared (PPO, flat: one network scores every shift).")
    ] = "mlp",
    threads: Annotated[int, typer.Option(help="torch threads for the network updates.")] = 1,
) -> None:
    """Train an RL policy on the training days and save it (and its ONNX export)."""
    from simulator.grid.policy_info import ONNX_FILE
    from simulator.grid.rl import TrainConfig, get_backend

    with _errors():
        model = _model()
        overrides: dict[str, Any] = {}
        for item in hyper or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise PolicyError(f"--set expects KEY=VALUE, got {item!r}")
            try:
                overrides[key] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key] = value
        config = TrainConfig(
            algorithm=algo,
            total_timesteps=timesteps,
            seed=seed,
            actions_per_day=actions_per_day,
            n_envs=n_envs,
            hyperparameters=overrides,
            demonstration_episodes=demonstrations,
            bc_epochs=bc_epochs,
            actions=actions,
            network=network,
            threads=threads,
        )
        console.print(f"training {backend}-{algo} for {timesteps} steps on {len(model.train_days())} days")
        with _progress(f"train {algo}", timesteps) as advance:
            policy = get_backend(backend).train(model, config, progress=advance)
        policy.save(out)
        console.print(f"saved {out} ({policy.info.train_seconds:.0f} s)")
        if policy.info.validation:
            console.print(f"validation (SCR+SSR)/2: {policy.info.validation}; kept {policy.info.selected}")
        if onnx:
            try:
                console.print(f"onnx: {policy.export_onnx(out / ONNX_FILE)}")
            except GridError:
                raise
            except Exception as exc:  # the trained policy is saved; say so instead of a traceback
                raise PolicyError(
                    f"policy saved in {out}, but the ONNX export failed ({type(exc).__name__}: {exc}); "
                    f"retry with: fedge grid export --policy {out}"
                ) from exc


@app.command()
def evaluate(
    policy: Annotated[
        str,
        typer.Option("--policy", help="Policy folder, a policy .onnx file, or 'heuristic'."),
    ],
    days: Annotated[str, typer.Option(help="test, train, all, or e.g. '100-110,200'.")] = "test",
    plots: Annotated[Path | None, typer.Option(help="Folder for per-day PNG plots.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the per-day scores as JSON.")] = None,
    onnx: Annotated[bool, typer.Option(help="Act with the exported policy.onnx (onnxruntime).")] = False,
    reference: Annotated[bool, typer.Option(help="Also run the surplus-boundary rule (reference).")] = False,
) -> None:
    """Mean (SCR+SSR)/2 on held-out days for the policy, no-shift and the PV-peak heuristic."""
    import numpy as np

    from simulator.grid.evaluate import NO_SHIFT
    from simulator.grid.evaluate import evaluate as run_evaluation
    from simulator.grid.onnx_policy import OnnxPolicy
    from simulator.grid.plots import plot_episode, plot_report
    from simulator.grid.policies import Policy, PvPeakHeuristic, SurplusBoundaryRule
    from simulator.grid.policy_info import ONNX_FILE
    from simulator.grid.rl import TrainedPolicy

    with _errors():
        model = _model()
        if Path(policy).suffix == ".onnx":
            chosen: Any = OnnxPolicy(Path(policy))  # self-describing: settings from its metadata
        else:
            chosen = _load_policy(policy)
        if onnx and not isinstance(chosen, OnnxPolicy):
            if not isinstance(chosen, TrainedPolicy):
                raise PolicyError("--onnx needs a trained policy folder or a policy .onnx file")
            chosen = OnnxPolicy(Path(policy) / ONNX_FILE, chosen.info)
        selected = model.days(days)
        env = _env_for(model, chosen, selected)
        policies: list[Policy] = (
            [chosen] if isinstance(chosen, PvPeakHeuristic) else [chosen, PvPeakHeuristic()]
        )
        if reference:
            policies.append(SurplusBoundaryRule())
        with _progress(f"evaluate on {len(selected)} days", len(selected)) as advance:
            report = run_evaluation(
                env, policies, selected, progress=advance, keep_episodes=plots is not None
            )
        table = Table(title=f"(SCR+SSR)/2 on {len(selected)} days ({days}), {env.actions_per_day} shifts/day")
        for column in ("method", "mean", "std", "min", "max", "gain vs no-shift", "per-day gain (mean±std)"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for name in report.methods():
            s = report.summary(name)
            gains = report.per_day_gain(name)
            table.add_row(
                name,
                f"{s.mean:.4f}",
                f"{s.std:.4f}",
                f"{s.min:.4f}",
                f"{s.max:.4f}",
                f"{100 * s.gain_vs_no_shift:+.2f} %",
                f"{100 * gains.mean():+.2f} ± {100 * gains.std():.2f} %",
            )
        console.print(table)
        if chosen.name != PvPeakHeuristic.name:
            console.print(
                f"{chosen.name} beats the heuristic on {report.wins(chosen.name, 'heuristic')} "
                f"of {len(selected)} days"
            )
        for name in report.methods():
            console.print(f"mean {name}: {np.mean(report.scores[name]):.6f}", highlight=False)
        if plots is not None:
            for result in report.episodes[chosen.name]:
                plot_episode(plots / f"day_{result.day:03d}.png", result)
            plot_report(plots / "scores.png", report)
            console.print(f"plots in {plots}")
        if json_out is not None:
            summary = {name: asdict(report.summary(name)) for name in report.methods()}
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(
                json.dumps(
                    {
                        "days": list(report.days),
                        "scores": report.scores,
                        "summary": summary,
                        "no_shift": NO_SHIFT,
                    },
                    indent=2,
                )
            )


@app.command()
def export(
    policy: Annotated[Path, typer.Option("--policy", help="Policy folder.")],
    out: Annotated[Path | None, typer.Option(help="ONNX file (default: <policy>/policy.onnx).")] = None,
) -> None:
    """Export a trained policy to ONNX (obs -> argmax action) and check it against the original."""
    import numpy as np

    from simulator.grid.onnx_policy import METADATA_KEY, OnnxPolicy
    from simulator.grid.policy_info import ONNX_FILE
    from simulator.grid.rl import load_policy

    with _errors():
        trained = load_policy(policy)
        path = trained.export_onnx(out or policy / ONNX_FILE)
        probe = np.random.default_rng(0).normal(size=(256, trained.info.obs_dim)).astype(np.float32)
        exported = OnnxPolicy(path)  # reads the settings embedded in the file
        same = bool(np.array_equal(trained.predict(probe), exported.predict(probe)))
        console.print(
            f"onnx: {path} (policy.json embedded as {METADATA_KEY}: {exported.info == trained.info}; "
            f"same actions on 256 probe observations: {same})"
        )
        if not same or exported.info != trained.info:
            raise typer.Exit(code=1)


@app.command()
def register(
    ctx: typer.Context,
    policy: Annotated[Path, typer.Option("--policy", help="Policy folder (policy.json, policy.onnx).")],
    name: Annotated[
        str | None, typer.Option(help="Model name (default grid-policy-<backend>-<algo>).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset id to reference (default: the grid's training days).")
    ] = None,
    organization: Annotated[str, typer.Option(help="organization_id of the model.")] = "fedge",
    developer: Annotated[str, typer.Option(help="developer_id of the model.")] = "grid",
    controller: Annotated[str | None, typer.Option(help="Controller URL (default: FEDGE_URL).")] = None,
    token: Annotated[str | None, typer.Option(help="API token, admin (default: FEDGE_TOKEN).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Register a policy in the controller's registry: model.zip as the trained version, policy.onnx (with
    policy.json embedded) as the ONNX version, both SHA-256 recorded on chain."""
    from controller.client import FedgeAPIError, FedgeClient
    from simulator.grid.publish import register_policy

    root = ctx.find_root().params
    url = controller or root.get("controller")
    credential = token or root.get("token")
    with _errors(), FedgeClient(url, credential) as client:
        try:
            done = register_policy(
                client,
                policy,
                name=name,
                dataset_id=dataset,
                organization_id=organization,
                developer_id=developer,
            )
        except FedgeAPIError as exc:
            console.print(f"[red]error[/red] {exc.status} {exc.title}: {exc.detail}")
            raise typer.Exit(code=1) from exc
    if as_json:
        console.print_json(json.dumps(asdict(done)))
    else:
        console.print(
            f"model {done.model_id}: onnx version {done.onnx_version} (sha256 {done.sha256}), "
            f"trained version {done.trained_version or '-'}, dataset {done.dataset_id}",
            highlight=False,
        )


if __name__ == "__main__":  # pragma: no cover
    app()
