"""``fedge``: the user CLI over the REST API (datasets, models, tokens, jobs, devices, deployments, fl).

Connection: ``--controller URL`` / ``FEDGE_URL`` and ``--token T`` / ``FEDGE_TOKEN``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from controller import profiles
from controller.client import FedgeAPIError, FedgeClient
from controller.schemas.commands import CommandOut
from controller.schemas.deployments import DeploymentOut
from controller.schemas.fl import FlJobOut
from controller.schemas.jobs import TERMINAL_JOB_STATES

app = typer.Typer(
    help="fedge: datasets, models and more on a fedge controller. Add --debug for tracebacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="Register, list and download datasets.", no_args_is_help=True)
models_app = typer.Typer(help="Register models, check status, download artifacts.", no_args_is_help=True)
tokens_app = typer.Typer(help="Mint, list and revoke API credentials (admin).", no_args_is_help=True)
jobs_app = typer.Typer(help="Watch, list and cancel training jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(tokens_app, name="tokens")
devices_app = typer.Typer(help="Enrollment tokens, devices and revocation (fleet).", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
deployments_app = typer.Typer(help="List, show, watch and cancel deployments (fleet).", no_args_is_help=True)
app.add_typer(deployments_app, name="deployments")
fl_app = typer.Typer(
    help="Federated learning on enrolled devices: run, watch, list, cancel.", no_args_is_help=True
)
app.add_typer(fl_app, name="fl")

console = Console()
err = Console(stderr=True)
_state: dict[str, Any] = {}


@app.callback()
def _connection(
    controller: Annotated[str | None, typer.Option(envvar="FEDGE_URL", help="controller URL")] = None,
    token: Annotated[str | None, typer.Option(envvar="FEDGE_TOKEN", help="API token")] = None,
    profile: Annotated[
        str | None, typer.Option(envvar="FEDGE_PROFILE", help="saved connection (`fedge login`)")
    ] = None,
) -> None:
    _state["url"], _state["token"], _state["profile"] = controller, token, profile


def _client() -> FedgeClient:
    """A client for --controller/--token (or FEDGE_URL/FEDGE_TOKEN), else the chosen or default profile."""
    url, token = _state.get("url"), _state.get("token")
    if url is None or token is None:
        try:
            saved = profiles.resolve(_state.get("profile"))
        except profiles.ProfileError as exc:
            err.print(f"[red]error[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        if saved is not None:
            url = url or saved.url
            token = token or saved.token
            _state["url"] = url
    return FedgeClient(url, token)


@app.command("login")
def login(
    url: Annotated[str, typer.Argument(help="the controller's URL, e.g. https://fedge.example:8400")],
    token: Annotated[
        str | None, typer.Option(envvar="FEDGE_TOKEN", help="API token (asked for when not given)")
    ] = None,
    profile: Annotated[str, typer.Option("--profile", help="name of this connection")] = profiles.DEFAULT,
    default: Annotated[bool, typer.Option(help="make it the default profile")] = False,
    check: Annotated[bool, typer.Option(help="check the URL and token against the controller first")] = True,
) -> None:
    """Save a controller URL and token as a profile (0600 file; see `fedge profiles`)."""
    if token is None:
        token = typer.prompt("API token", hide_input=True)
    if check:  # reachable, and the token authenticates (a 403 is fine: a valid token of another role)
        with FedgeClient(url, token) as fc:
            fc.health()
            try:
                fc.list_models(limit=1)
            except FedgeAPIError as exc:
                if exc.status == 401:
                    err.print(f"[red]error[/red] {url} refused the token: {exc.detail}", highlight=False)
                    raise typer.Exit(1) from None
    path = profiles.save(profile, url, token, default)
    err.print(f"saved profile {profile!r} ({url}) in {path}", highlight=False)


@app.command("profiles")
def profiles_list(
    remove: Annotated[str | None, typer.Option("--remove", help="delete this profile")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The saved connections (tokens never shown)."""
    try:
        if remove is not None:
            if not profiles.remove(remove):
                err.print(f"[red]error[/red] no profile {remove!r}", highlight=False)
                raise typer.Exit(1)
            err.print(f"removed profile {remove!r}", highlight=False)
        default, saved = profiles.listing()
    except profiles.ProfileError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    rows = [
        {"name": p.name, "url": p.url, "default": p.name == default, "token": bool(p.token)} for p in saved
    ]
    if as_json:
        _emit({"profiles": rows}, True)
        return
    table = Table("profile", "url", "default", "token")
    for r in rows:
        table.add_row(
            str(r["name"]), str(r["url"]), "yes" if r["default"] else "", "saved" if r["token"] else ""
        )
    console.print(table)


def _json_object(text: str, option: str) -> dict[str, Any]:
    """A JSON object option; a usage error (exit 2) naming the option otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"not valid JSON ({exc.msg} at column {exc.colno})", param_hint=option
        ) from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"expected a JSON object, got {type(value).__name__}", param_hint=option)
    return value


def _fractions(text: str, option: str) -> list[float]:
    """Comma-separated numbers, e.g. ``0.1,0.5,1.0``."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a comma-separated list of numbers", param_hint=option
        ) from None


@contextmanager
def _api() -> Iterator[FedgeClient]:
    """A client; API errors become a one-line message and exit code 1."""
    client = _client()
    try:
        yield client
    except FedgeAPIError as exc:
        err.print(f"[red]error[/red] {exc.status} {exc.title}: {exc.detail}")
        raise typer.Exit(1) from exc
    finally:
        client.close()


def _bar(total: int | None, what: str) -> Progress:
    p = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
    )
    p.add_task(what, total=total)
    return p


def _emit(obj: Any, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(obj, default=str))
    else:
        for key, value in obj.items():
            console.print(f"[bold]{key}[/bold]: {value}")


# ---------------------------------------------------------------- datasets
@datasets_app.command("push")
def datasets_push(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    organization_id: Annotated[str, typer.Option("--org", help="owner organization id")],
    samples_dimension: Annotated[str, typer.Option("--dims", help='sample dimension, e.g. "(1,8,8)"')],
    name: Annotated[str | None, typer.Option(help="display name")] = None,
    description: Annotated[str | None, typer.Option(help="free text")] = None,
    extra: Annotated[str | None, typer.Option("--metadata", help="more metadata as a JSON object")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Upload a dataset (streamed, with a progress bar)."""
    meta: dict[str, Any] = _json_object(extra, "--metadata") if extra else {}
    meta.update({"organization_id": organization_id, "samples_dimension": samples_dimension})
    if name:
        meta["name"] = name
    if description:
        meta["description"] = description
    with _api() as fc, _bar(file.stat().st_size, f"upload {file.name}") as bar:
        created = fc.push_dataset(file, meta, progress=lambda n: bar.advance(bar.task_ids[0], n))
    _emit(created.model_dump(), as_json)


@datasets_app.command("list")
def datasets_list(
    limit: int = 50, offset: int = 0, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """List datasets, newest first."""
    with _api() as fc:
        page = fc.list_datasets(limit, offset)
    if as_json:
        console.print_json(page.model_dump_json())
        return
    table = Table(
        "dataset_id", "name", "organization", "dims", "size", "sha256", title=f"{page.total} datasets"
    )
    for d in page.items:
        table.add_row(
            d.dataset_id,
            d.name or "",
            d.organization_id or "",
            d.samples_dimension or "",
            str(d.size_bytes),
            (d.sha256 or "")[:16],
        )
    console.print(table)


@datasets_app.command("get")
def datasets_get(
    dataset_id: str,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="download to this file")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a dataset's metadata; with -o, download it (SHA-256 verified). A unique id prefix is enough."""
    with _api() as fc:
        dataset_id = _dataset_id(fc, dataset_id)
        meta = fc.dataset_metadata(dataset_id)
        if output is None:
            _emit(meta.model_dump(), as_json)
            return
        with _bar(meta.size_bytes, f"download {dataset_id[:8]}") as bar:
            sha = fc.download_dataset(dataset_id, output, progress=lambda n: bar.advance(bar.task_ids[0], n))
    err.print(f"saved {output} (sha256 {sha} verified)")


# ------------------------------------------------------------------ models
@models_app.command("register")
def models_register(
    dataset_id: Annotated[str, typer.Option("--dataset", help="dataset the model trains on")],
    developer_id: Annotated[str, typer.Option("--developer")],
    organization_id: Annotated[str, typer.Option("--org")],
    name: Annotated[str | None, typer.Option()] = None,
    train_image: Annotated[str | None, typer.Option(help="container image that trains it")] = None,
    training: Annotated[
        str | None, typer.Option(help="training spec as JSON (kind, entrypoint, ...)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Register a model for a dataset."""
    meta: dict[str, Any] = {
        "model_params": {"developer_id": developer_id, "organization_id": organization_id},
        "data_params": {"dataset_id": dataset_id},
    }
    if name:
        meta["name"] = name
    if training:
        meta["training"] = _json_object(training, "--training")
    with _api() as fc:
        created = fc.register_model(meta, train_image=train_image)
    _emit(created.model_dump(), as_json)


@models_app.command("list")
def models_list(
    limit: int = 50, offset: int = 0, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """List models, newest first."""
    with _api() as fc:
        page = fc.list_models(limit, offset)
    if as_json:
        console.print_json(page.model_dump_json())
        return
    table = Table("model_id", "name", "status", "dataset", "versions", title=f"{page.total} models")
    for m in page.items:
        table.add_row(m.model_id, m.name or "", m.status, m.data_params.dataset_id[:8], str(len(m.versions)))
    console.print(table)


@models_app.command("status")
def models_status(model_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Status, training digest and versions of a model."""
    with _api() as fc:
        model_id = _model_id(fc, model_id)
        meta = fc.model_metadata(model_id)
    if as_json:
        console.print_json(meta.model_dump_json())
        return
    console.print(f"[bold]{meta.model_id}[/bold] {meta.name or ''}  status=[cyan]{meta.status}[/cyan]")
    console.print(f"dataset {meta.data_params.dataset_id}  training digest {meta.training_digest}")
    for v in meta.versions:
        console.print(f"  v{v.version} {v.kind:<9} {v.format or '':<8} {v.size_bytes} B  sha256 {v.sha256}")


@models_app.command("get")
def models_get(
    model_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="file to write")],
    version: Annotated[int | None, typer.Option(help="a specific version")] = None,
    kind: Annotated[str | None, typer.Option(help="trained | onnx | quantized")] = None,
) -> None:
    """Download a model's artifact (SHA-256 verified). Exit 1 with a message if not trained yet."""
    with _api() as fc:
        model_id = _model_id(fc, model_id)
        params = {k: v for k, v in {"version": version, "kind": kind}.items() if v is not None}
        total = fc.content_length(f"/v1/models/{model_id}", params or None)
        with _bar(total, f"download {model_id[:8]}") as bar:
            sha = fc.download_model(
                model_id,
                output,
                version=version,
                kind=kind,
                progress=lambda n: bar.advance(bar.task_ids[0], n),
            )
    err.print(f"saved {output} (sha256 {sha} verified)")


@models_app.command("register-package")
def models_register_package(
    package: Annotated[
        Path, typer.Argument(exists=True, dir_okay=True, help="directory, .tar.gz, .zip or wheel")
    ],
    dataset_id: Annotated[str, typer.Option("--dataset")],
    developer_id: Annotated[str, typer.Option("--developer")],
    organization_id: Annotated[str, typer.Option("--org")],
    entrypoint: Annotated[str, typer.Option(help="module or module:function inside the package")],
    framework: Annotated[str | None, typer.Option(help="pytorch, sklearn, ...")] = None,
    hyperparameters: Annotated[str | None, typer.Option(help="JSON object")] = None,
    name: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Register a model with its python training code (a directory is archived as .tar.gz first)."""
    import tarfile
    import tempfile

    meta: dict[str, Any] = {
        "model_params": {"developer_id": developer_id, "organization_id": organization_id},
        "data_params": {"dataset_id": dataset_id},
        "training": {
            "kind": "python",
            "entrypoint": entrypoint,
            "framework": framework,
            "hyperparameters": _json_object(hyperparameters, "--hyperparameters") if hyperparameters else {},
        },
    }
    if name:
        meta["name"] = name
    with tempfile.TemporaryDirectory() as tmp:
        archive = package
        if package.is_dir():
            archive = Path(tmp) / f"{package.name}.tar.gz"
            with tarfile.open(archive, "w:gz") as tf:
                tf.add(package, arcname=package.name, filter=_no_caches)
        with _api() as fc:
            created = fc.register_model_with_package(meta, archive)
    _emit(created.model_dump(), as_json)


def _no_caches(info: Any) -> Any:
    return None if "__pycache__" in info.name else info


@models_app.command("train")
def models_train(
    model_id: str,
    hyperparameters: Annotated[str | None, typer.Option(help="JSON object merged over the spec's")] = None,
    watch: Annotated[bool, typer.Option(help="follow progress until the job ends")] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the queued job as JSON (no watching)")
    ] = False,
) -> None:
    """Start a training job (and watch it)."""
    with _api() as fc:
        model_id = _model_id(fc, model_id)
        job = fc.train(
            model_id, _json_object(hyperparameters, "--hyperparameters") if hyperparameters else None
        )
    if as_json:
        _emit(job.model_dump(mode="json"), True)
        return
    err.print(f"job {job.job_id} {job.status}")
    if watch:
        jobs_watch(job.job_id)
    else:
        console.print(job.job_id)


@models_app.command("translate")
def models_translate(
    model_id: str,
    source_version: Annotated[int | None, typer.Option(help="trained version to translate (newest)")] = None,
    quantize: Annotated[
        bool, typer.Option(help="also try an int8 variant (kept if accurate and faster)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Translate a trained model to ONNX, validated against the source on held-out samples."""
    with _api() as fc:
        model_id = _model_id(fc, model_id)
        if as_json:
            result = fc.translate(model_id, source_version=source_version, quantize=quantize)
        else:  # the controller answers when export, validation (and int8) are done: say it is working
            with err.status(f"translating {model_id[:8]}: export to ONNX, validate against the source"):
                result = fc.translate(model_id, source_version=source_version, quantize=quantize)
    _emit(result.model_dump(mode="json"), as_json)


@models_app.command("drift-policy")
def models_drift_policy(
    model_id: str,
    on_drift: Annotated[
        str | None, typer.Option("--on-drift", help="none | notify | retrain (omit: show the policy)")
    ] = None,
    retrain_with: Annotated[str, typer.Option(help="retrain: training (the model's spec) | fl")] = "training",
    fl_spec: Annotated[
        Path | None, typer.Option(help="JSON file: an FL job body without model/participants (with fl)")
    ] = None,
    debounce: Annotated[int, typer.Option(help="seconds: at most one action per model in this time")] = 600,
    webhook: Annotated[str | None, typer.Option(help="notify: POST each action to this URL")] = None,
    waves: Annotated[
        str, typer.Option(help="canary waves of the retrained version, e.g. 0.5,1.0")
    ] = "0.5,1.0",
    no_rollback: Annotated[bool, typer.Option("--no-rollback", help="no automatic rollback")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show or set what a drift event on the model does: nothing, notify, or retrain, translate, canary."""
    with _api() as fc:
        if on_drift is None:
            policy = fc.drift_policy(model_id)
        else:
            body: dict[str, Any] = {
                "on_drift": on_drift,
                "retrain_with": retrain_with,
                "debounce_seconds": debounce,
                "webhook_url": webhook,
                "rollout": {
                    "waves": _fractions(waves, "--waves"),
                    "auto_rollback": not no_rollback,
                },
            }
            if fl_spec is not None:
                body["fl"] = _json_object(fl_spec.read_text(encoding="utf-8"), "--fl-spec")
            policy = fc.set_drift_policy(model_id, body)
    _emit(policy.model_dump(mode="json"), as_json)


@models_app.command("drift-actions")
def models_drift_actions(
    model_id: str,
    state: Annotated[str | None, typer.Option(help="only actions in this state")] = None,
    limit: Annotated[int, typer.Option(help="actions per page")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What the model's drift policy did, newest first: kind, state, events folded in, each step's id."""
    with _api() as fc:
        page = fc.drift_actions(model_id, state=state, limit=limit)
    if as_json:
        _emit(page.model_dump(mode="json"), True)
        return
    for a in page.items:
        steps = ", ".join(f"{k} {v}" for k, v in a.steps.items() if k not in ("devices", "participants"))
        line = f"{a.created_at.isoformat()} {a.kind} {a.state} ({a.events} event(s), device {a.device_id})"
        console.print(line + (f": {steps}" if steps else "") + (f" - {a.error}" if a.error else ""),
                      highlight=False)  # fmt: skip
    err.print(f"{len(page.items)} of {page.total} action(s)")


@models_app.command("pull")
def models_pull(
    model_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="file to write")],
    fmt: Annotated[str, typer.Option("--format", help="trained | onnx | quantized")] = "trained",
    version: Annotated[int | None, typer.Option(help="a specific version")] = None,
) -> None:
    """Download a model version in a format; the SHA-256 is checked against the chain record."""
    models_get(model_id, output, version=version, kind=None if version else fmt)
    with _api() as fc:
        model_id = _model_id(fc, model_id)
        prov = fc.model_provenance(model_id)
        sha = hashlib_file(output)
    matches = [v for v in prov.versions if v.sha256_chain == sha]
    if not matches:
        err.print(f"[red]error[/red] {output} (sha256 {sha}) matches no chain record of model {model_id}")
        output.unlink(missing_ok=True)
        raise typer.Exit(1)
    err.print(f"chain record matches: {matches[0].subject} ({matches[0].record})")


def hashlib_file(path: Path) -> str:
    import hashlib

    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            sha.update(chunk)
    return sha.hexdigest()


# -------------------------------------------------------------------- jobs
@jobs_app.command("watch")
def jobs_watch(job_id: str) -> None:
    """Live progress bar and metrics until the job ends; exit 1 if it failed."""
    import time

    from rich.live import Live

    with _api() as fc:
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            "{task.percentage:>3.0f}%",
            "{task.fields[metrics]}",
            console=err,
        )
        task = progress.add_task(f"job {job_id[:8]}", total=1.0, metrics="")
        with Live(progress, console=err, refresh_per_second=4):
            while True:
                job = fc.job(job_id)
                shown = {
                    k: v for k, v in job.metrics.items() if isinstance(v, int | float) and k != "progress"
                }
                text = "  ".join(f"{k}={v:.4g}" for k, v in shown.items())
                progress.update(task, completed=job.progress or 0.0, metrics=f"{job.status} {text}")
                if job.status in TERMINAL_JOB_STATES:
                    break
                time.sleep(0.5)
    if job.status == "succeeded":
        err.print(f"[green]succeeded[/green]: model {job.model_id} version {job.model_version}")
        return
    err.print(f"[red]{job.status}[/red]: {job.error}")
    for line in job.log_tail[-10:]:
        err.print(f"  {line}")
    raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(
    model_id: Annotated[str | None, typer.Option("--model")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Jobs, newest first."""
    with _api() as fc:
        rows = fc.jobs(model_id)
    if as_json:
        _emit([j.model_dump(mode="json") for j in rows], True)
        return
    table = Table("job_id", "model", "status", "progress", "version", "error")
    for j in rows:
        table.add_row(j.job_id, j.model_id[:8], j.status, f"{(j.progress or 0):.0%}",
                      str(j.model_version or ""), (j.error or "")[:60])  # fmt: skip
    console.print(table)


@jobs_app.command("logs")
def jobs_logs(job_id: str, follow: Annotated[bool, typer.Option("-f", "--follow")] = False) -> None:
    """Print the job's log (follow until it ends with -f)."""
    with _api() as fc:
        for line in fc.job_logs(job_id, follow=follow):
            console.print(line, markup=False, highlight=False)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Cancel a queued or running job."""
    with _api() as fc:
        job = fc.cancel_job(job_id)
    if as_json:
        _emit(job.model_dump(mode="json"), True)
        return
    err.print(f"job {job_id}: {job.status}")


@models_app.command("push-artifact")
def models_push_artifact(
    model_id: str,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    kind: Annotated[str, typer.Option(help="trained | onnx | quantized")] = "trained",
    fmt: Annotated[str | None, typer.Option("--format", help="pytorch, onnx, sklearn, ...")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Store an artifact as a new version (admin or the model's job credential)."""
    with _api() as fc, _bar(file.stat().st_size, f"upload {file.name}") as bar:
        stored = fc.put_artifact(
            model_id, file, kind=kind, fmt=fmt, progress=lambda n: bar.advance(bar.task_ids[0], n)
        )
    _emit(stored.model_dump(), as_json)


# ------------------------------------------------------------------ tokens
@tokens_app.command("create")
def tokens_create(
    name: str,
    role: Annotated[str, typer.Option(help="admin | operator | developer | job")] = "developer",
    ttl: Annotated[int | None, typer.Option(help="lifetime in seconds")] = None,
    model_id: Annotated[str | None, typer.Option(help="for job tokens: the model it may write")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Mint a credential; prints the token once."""
    with _api() as fc:
        created = fc.create_token(name, role, ttl_seconds=ttl, model_id=model_id)
    if as_json:
        _emit(created.model_dump(mode="json"), True)
        return
    expires = created.model_dump(mode="json")["expires_at"]  # as the route's JSON spells it
    err.print(f"id {created.id} role {created.role} expires {expires}")
    console.print(created.token)


@tokens_app.command("list")
def tokens_list(
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """List credentials (never their secrets)."""
    with _api() as fc:
        rows = fc.list_tokens()
    if as_json:
        _emit([r.model_dump(mode="json") for r in rows], True)
        return
    table = Table("id", "name", "role", "subject", "active", "expires", "revoked")
    for r in (row.model_dump(mode="json") for row in rows):  # timestamps as the route's JSON spells them
        table.add_row(
            r["id"],
            r["name"],
            r["role"],
            r["subject"],
            "yes" if r["active"] else "no",
            str(r["expires_at"]),
            str(r["revoked_at"]),
        )
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Revoke a credential now."""
    with _api() as fc:
        fc.revoke_token(token_id)
    if as_json:
        _emit({"id": token_id, "revoked": True}, True)
        return
    err.print(f"revoked {token_id}")


def _pairs(pairs: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"'{pair}' is not k=v", param_hint=option)
        out[key] = value
    return out


@devices_app.command("token")
def devices_token(
    labels: Annotated[list[str] | None, typer.Option("--labels", "--label", help="k=v (repeatable)")] = None,
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 3600,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Mint a one-time enrollment token; prints it once."""
    with _api() as fc:
        created = fc.enrollment_token(_pairs(labels, "--labels"), ttl)
    if as_json:
        _emit(created.model_dump(mode="json"), True)
        return
    err.print(f"expires {created.model_dump(mode='json')['expires_at']}")
    console.print(created.token)


@devices_app.command("list")
def devices_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Devices with online/offline, model version and last error."""
    with _api() as fc:
        rows = fc.devices()
    if as_json:
        _emit([r.model_dump(mode="json") for r in rows], True)
        return
    table = Table("id", "status", "online", "labels", "model", "version", "last error")
    for r in rows:
        labels = ",".join(f"{k}={v}" for k, v in r.labels.items())
        table.add_row(
            r.id,
            r.status,
            "yes" if r.online else "no",
            labels,
            str(r.model_id or "-"),
            str(r.model_version or "-"),
            str(r.last_error or ""),
        )
    console.print(table)


@devices_app.command("revoke")
def devices_revoke(
    device_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Revoke a device: it is cut off the API at once."""
    with _api() as fc:
        fc.revoke_device(device_id)
    if as_json:
        _emit({"device_id": device_id, "revoked": True}, True)
        return
    err.print(f"revoked {device_id}")


def _print_command(cmd: CommandOut) -> None:
    console.print(
        f"{cmd.id} {cmd.kind} model {cmd.model_id} v{cmd.version} "
        f"days {cmd.params.get('days')}: {cmd.state}{' - ' + cmd.error if cmd.error else ''}",
        highlight=False,
    )
    result = cmd.result or {}
    if result:
        console.print(
            f"  {result.get('days')} days, mean (SCR+SSR)/2 {result.get('mean_score_before', 0):.4f} -> "
            f"{result.get('mean_score_after', 0):.4f} ({100 * result.get('gain', 0):+.2f} %)",
            highlight=False,
        )


@devices_app.command("grid-run")
def devices_grid_run(
    device_id: str,
    model: Annotated[str, typer.Option("--model", help="model id of a registered grid policy")],
    version: Annotated[int | None, typer.Option(help="model version (default: newest ONNX)")] = None,
    days: Annotated[str, typer.Option(help="test, train, all, or e.g. 152,160-165")] = "test",
    watch: Annotated[bool, typer.Option(help="wait until the device reports the result")] = False,
    timeout: Annotated[float, typer.Option(help="--watch: seconds to wait")] = 3600,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start the grid simulator with a registered RL policy on a device (the running agent executes it)."""
    with _api() as fc:
        cmd = fc.grid_run(device_id, model, version, days)
        err.print(f"command {cmd.id} {cmd.state}")
        if watch:
            cmd = fc.wait_command(device_id, cmd.id, timeout=timeout)
    if as_json:
        _emit(cmd.model_dump(mode="json"), True)
    else:
        _print_command(cmd)
    if watch and cmd.state != "succeeded":
        raise typer.Exit(1)


@devices_app.command("command")
def devices_command(
    device_id: str, command_id: str, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """A device command's state and result."""
    with _api() as fc:
        cmd = fc.command(device_id, command_id)
    if as_json:
        _emit(cmd.model_dump(mode="json"), True)
    else:
        _print_command(cmd)


@devices_app.command("commands")
def devices_commands(device_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A device's commands, newest first."""
    with _api() as fc:
        page = fc.commands(device_id)
    if as_json:
        _emit(page.model_dump(mode="json"), True)
        return
    for cmd in page.items:
        _print_command(cmd)


@devices_app.command("telemetry")
def devices_telemetry(
    device_id: str,
    command: Annotated[str | None, typer.Option("--command", help="only this command's records")] = None,
    kind: Annotated[str | None, typer.Option("--type", help="only this type, e.g. grid.day")] = None,
    limit: Annotated[int, typer.Option(help="records per page")] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A device's stored telemetry (e.g. the per-day results of a grid run)."""
    with _api() as fc:
        page = fc.telemetry(device_id, command_id=command, type=kind, limit=limit)
    if as_json:
        _emit(page.model_dump(mode="json"), True)
        return
    for rec in page.items:
        body = rec.body
        if rec.type == "grid.day":
            console.print(
                f"seq {rec.seq} day {body['day']}: (SCR+SSR)/2 {body['before']['score']:.4f} -> "
                f"{body['after']['score']:.4f}, {body['shifted']} shifts ({body['noops']} no-ops)",
                highlight=False,
            )
        else:
            console.print(f"seq {rec.seq} {rec.type}: {json.dumps(body)}", highlight=False)


@devices_app.command("metrics")
def devices_metrics(
    device_id: str,
    last: Annotated[int, typer.Option(min=1, max=1000, help="how many monitor summaries")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The device monitor's latest summaries (inferences, latency, ME/MAE/MAPE/bias, drift), newest last."""
    from fedge_protocol.documents import TelemetryType

    kind = TelemetryType.MONITOR.value
    with _api() as fc:
        total = fc.telemetry(device_id, type=kind, limit=1).total
        page = fc.telemetry(device_id, type=kind, limit=last, offset=max(total - last, 0))
    if as_json:
        _emit({"device_id": device_id, "total": total, "items": [t.body for t in page.items]}, True)
        return

    def num(value: Any, fmt: str = ".4g") -> str:
        return "" if value is None else format(value, fmt)

    table = Table("at", "model", "inferences", "p50 ms", "p99 ms", "dropped", "MAE", "MAPE", "bias", "drift")
    for t in page.items:
        b, errors = t.body, t.body.get("errors") or {}
        model = f"{str(b.get('model_id') or '')[:8]} v{b.get('version')}" if b.get("model_id") else ""
        drift = "" if b.get("drift") is None else ("yes" if b["drift"] else "no")
        if b.get("drift_share") is not None:
            drift += f" ({b['drift_share']:.0%})"
        table.add_row(
            str(b.get("at", "")), model, str(b.get("inferences", "")), num(b.get("latency_p50_ms")),
            num(b.get("latency_p99_ms")), str(b.get("dropped", "")), num(errors.get("mae")),
            num(errors.get("mape")), num(errors.get("bias")), drift,
        )  # fmt: skip
    console.print(table)
    err.print(f"{len(page.items)} of {total} summar{'y' if total == 1 else 'ies'}")


@devices_app.command("events")
def devices_events(
    device_id: str,
    kind: Annotated[str | None, typer.Option("--type", help="only this type, e.g. monitor.drift")] = None,
    model: Annotated[str | None, typer.Option("--model", help="only this model's events")] = None,
    limit: Annotated[int, typer.Option(help="events per page")] = 50,
    offset: Annotated[int, typer.Option(help="skip this many (newest first)")] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A device's events, newest first: drift alarms of its monitor (detector, window, drifted features)."""
    with _api() as fc:
        page = fc.device_events(device_id, type=kind, model_id=model, limit=limit, offset=offset)
    if as_json:
        _emit(page.model_dump(mode="json"), True)
        return
    for ev in page.items:
        body = ev.body
        what = f"{ev.model_id} v{ev.version}" if ev.model_id else "no model"
        line = f"{ev.occurred_at or ev.received_at.isoformat()} {ev.type} {ev.detector or ''} {what}"
        line += f" window {body.get('window')}"
        if body.get("drift_share") is not None:
            line += f", share {float(body['drift_share']):.2f}"
        if body.get("drifted_features"):
            line += f", drifted: {', '.join(map(str, body['drifted_features'][:8]))}"
        console.print(line, highlight=False)
    err.print(f"{len(page.items)} of {page.total} event(s)")


@app.command("deploy")
def deploy(
    model_id: str,
    version: Annotated[int | None, typer.Option(help="model version (default: newest ONNX)")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="device id (repeatable)")] = None,
    selector: Annotated[list[str] | None, typer.Option("--selector", help="label k=v (repeatable)")] = None,
    waves: Annotated[str | None, typer.Option(help="cumulative fractions, e.g. 0.1,1.0")] = None,
    max_failure_ratio: Annotated[float, typer.Option(help="failures tolerated per wave")] = 0.0,
    auto_rollback: Annotated[bool, typer.Option(help="roll devices back when a wave fails")] = True,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="dataset id: the drift reference of the devices' monitors"),
    ] = None,
    watch: Annotated[bool, typer.Option(help="wait until the rollout ends")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Deploy a model version to devices (ids and/or label selector), optionally in waves."""
    fractions = _fractions(waves, "--waves") if waves else None  # usage errors before any request
    labels = _pairs(selector, "--selector") or None
    with _api() as fc:
        model_id = _model_id(fc, model_id)
        deployment_id = fc.deploy(
            model_id,
            version,
            device_ids=device or None,
            selector=labels,
            waves=fractions,
            max_failure_ratio=max_failure_ratio,
            auto_rollback=auto_rollback,
            reference_dataset_id=reference,
        ).deployment_id
        err.print(f"deployment {deployment_id}")
        if watch and not as_json:  # a live per-wave table while it rolls
            from rich.live import Live

            result = fc.deployment(deployment_id)
            with Live(_deployment_table(result), console=err, refresh_per_second=4) as live:
                while result.state == "rolling":
                    time.sleep(1.0)
                    result = fc.deployment(deployment_id)
                    live.update(_deployment_table(result))
        else:
            result = fc.wait_deployment(deployment_id) if watch else fc.deployment(deployment_id)
    if as_json:
        _emit(result.model_dump(mode="json"), True)
    else:
        console.print(f"{result.id} {result.state} {result.error or ''}".rstrip())
        for t in result.devices:
            console.print(f"  wave {t.wave} {t.device_id} {t.state}")
    if watch and result.state == "failed":
        raise typer.Exit(1)


def _deployment_table(dep: DeploymentOut) -> Table:
    """Per wave: how many devices are in each state."""
    waves = len(dep.strategy.get("waves", [1.0]))
    title = (
        f"deployment {dep.id[:8]} {dep.state}: {dep.model_id[:8]} v{dep.version}, wave "
        f"{min(dep.current_wave + 1, waves)}/{waves}" + (f" ({dep.error})" if dep.error else "")
    )
    states = sorted({t.state for t in dep.devices})
    table = Table("wave", "devices", *states, title=title)
    for wave in range(waves):
        targets = [t for t in dep.devices if t.wave == wave]
        if not targets:
            continue
        marker = " <" if wave == dep.current_wave and dep.state == "rolling" else ""
        counts = [str(sum(t.state == st for t in targets) or "") for st in states]
        table.add_row(f"{wave + 1}{marker}", str(len(targets)), *counts)
    return table


def _unique_prefix(kind: str, value: str, pages: Callable[[int], tuple[list[str], int]]) -> str:
    """The one full id starting with ``value`` (tables show 8 characters), paging through ``pages(offset)``
    -> (ids, total); a one-line error (exit 1) when none or several match."""
    if len(value) >= 36:
        return value
    found: list[str] = []
    offset = 0
    while True:
        ids, total = pages(offset)
        found += [i for i in ids if i.startswith(value)]
        offset += len(ids)
        if not ids or offset >= total or len(found) > 1:
            break
    if len(found) != 1:
        what = f"no {kind} id starts with" if not found else f"ambiguous {kind} id prefix"
        err.print(f"[red]error[/red] {what} {value!r}" + (f": {', '.join(found[:5])}" if found else ""))
        raise typer.Exit(1)
    return found[0]


def _model_id(fc: FedgeClient, value: str) -> str:
    def pages(offset: int) -> tuple[list[str], int]:
        page = fc.list_models(limit=500, offset=offset)
        return [m.model_id for m in page.items], page.total

    return _unique_prefix("model", value, pages)


def _dataset_id(fc: FedgeClient, value: str) -> str:
    def pages(offset: int) -> tuple[list[str], int]:
        page = fc.list_datasets(limit=500, offset=offset)
        return [d.dataset_id for d in page.items], page.total

    return _unique_prefix("dataset", value, pages)


def _deployment_id(fc: FedgeClient, value: str) -> str:
    def pages(offset: int) -> tuple[list[str], int]:
        page = fc.deployments(limit=500, offset=offset)
        return [d.id for d in page.items], page.total

    return _unique_prefix("deployment", value, pages)


@deployments_app.command("list")
def deployments_list(
    state: Annotated[
        str | None, typer.Option(help="rolling, succeeded, failed, superseded, cancelled")
    ] = None,
    model: Annotated[str | None, typer.Option(help="only deployments of this model id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Deployments, newest first, with their devices counted by state."""
    with _api() as fc:
        page = fc.deployments(state, model, limit, offset)
    if as_json:
        _emit(page.model_dump(mode="json"), True)
        return
    table = Table("id", "model", "version", "state", "wave", "devices", "created")
    for d in page.items:
        devices = ", ".join(f"{n} {st}" for st, n in sorted(d.devices.items()))
        table.add_row(
            d.id[:8], d.model_id[:8], str(d.version), d.state, f"{d.current_wave + 1}/{d.waves}", devices,
            d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )  # fmt: skip
    console.print(table)
    err.print(f"{len(page.items)} of {page.total} deployment(s)")


@deployments_app.command("show")
def deployments_show(
    deployment_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One deployment: its waves and every device's state (a unique id prefix is enough)."""
    with _api() as fc:
        dep = fc.deployment(_deployment_id(fc, deployment_id))
    if as_json:
        _emit(dep.model_dump(mode="json"), True)
        return
    console.print(_deployment_table(dep))
    for t in dep.devices:
        console.print(
            f"  wave {t.wave + 1} {t.device_id} {t.state} {t.error or ''}".rstrip(), highlight=False
        )


@deployments_app.command("watch")
def deployments_watch(
    deployment_id: str,
    interval: Annotated[float, typer.Option(min=0.2, help="seconds between refreshes")] = 1.0,
) -> None:
    """A live per-wave table until the deployment settles; exit 1 when it failed."""
    from rich.live import Live

    with _api() as fc:
        deployment_id = _deployment_id(fc, deployment_id)
        dep = fc.deployment(deployment_id)
        with Live(_deployment_table(dep), console=console, refresh_per_second=4) as live:
            while dep.state == "rolling":
                time.sleep(interval)
                dep = fc.deployment(deployment_id)
                live.update(_deployment_table(dep))
    if dep.state == "failed":
        raise typer.Exit(1)


@deployments_app.command("cancel")
def deployments_cancel(
    deployment_id: str,
    rollback: Annotated[
        bool, typer.Option(help="also give devices that installed it their previous model back")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Stop a rolling deployment: devices not reached are cancelled, devices still installing get their
    previous model back, installed ones keep it unless --rollback."""
    with _api() as fc:
        dep = fc.cancel_deployment(_deployment_id(fc, deployment_id), rollback)
    if as_json:
        _emit(dep.model_dump(mode="json"), True)
        return
    err.print(f"deployment {dep.id} cancelled")
    console.print(_deployment_table(dep))


# ---------------------------------------------------------------------- fl
def _fl_number(value: str) -> float | int:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a number", param_hint="--param") from None


def _fl_table(job: FlJobOut) -> Table:
    """The live per-round table: losses, accuracy, participants, stragglers, refusals, bytes, epsilon."""

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.4g}"

    title = (
        f"FL job {job.job_id[:8]} {job.status}: round {job.rounds_completed}/{job.rounds}, "
        f"{job.network}, {job.strategy.get('name', 'fedavg')}, min {job.min_clients} devices"
    )
    table = Table(
        "round",
        "train loss",
        "train acc",
        "eval loss",
        "eval acc",
        "devices",
        "stragglers",
        "refused",
        "bytes out/in",
        "epsilon max",
        "s",
        title=title,
    )
    for r in job.metrics:
        eps = max(r.epsilon.values()) if r.epsilon else None
        table.add_row(
            str(r.round),
            num(r.train_loss),
            num(r.train_accuracy),
            num(r.eval_loss),
            num(r.eval_accuracy),
            str(len(r.participants)),
            str(len(r.stragglers)),
            str(len(r.budget_refused)),
            f"{r.bytes_out}/{r.bytes_in}",
            num(eps),
            f"{r.seconds:.1f}",
        )
    return table


def _fl_outcome(job: FlJobOut) -> None:
    if job.status == "succeeded" and job.result is not None:
        chain = f", chain tx {job.chain.tx_hash}" if job.chain else ""
        eps = f", epsilon spent <= {job.epsilon_spent:.4g}" if job.epsilon_spent is not None else ""
        err.print(
            f"[green]succeeded[/green]: model {job.result.model_id} version {job.result.version} "
            f"(sha256 {job.result.sha256}){eps}{chain}"
        )
    elif job.status != "succeeded":
        err.print(f"[red]{job.status}[/red]: {job.error}")


def _fl_watch(fc: FedgeClient, job_id: str, as_json: bool, timeout: float) -> FlJobOut:
    if as_json:
        return fc.wait_fl_job(job_id, timeout=timeout)
    from rich.live import Live

    with Live(console=console, refresh_per_second=2) as live:
        return fc.wait_fl_job(job_id, timeout=timeout, on_update=lambda j: live.update(_fl_table(j)))


@fl_app.command("run")
def fl_run(
    model: Annotated[
        str, typer.Option("--model", help="registered model id (its next version is the result)")
    ],
    device: Annotated[
        list[str] | None, typer.Option("--device", help="participant device id (repeatable)")
    ] = None,
    selector: Annotated[list[str] | None, typer.Option("--selector", help="label k=v (repeatable)")] = None,
    version: Annotated[
        int | None, typer.Option(help="start from this version (an earlier FL result)")
    ] = None,
    network: Annotated[str | None, typer.Option(help="network the devices train, e.g. digits-mlp")] = None,
    engine: Annotated[
        str | None, typer.Option(help="flower (default) | nvflare (FLARE's simulator on the controller host)")
    ] = None,
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 3,
    min_clients: Annotated[int | None, typer.Option(help="devices every round needs")] = None,
    min_fraction: Annotated[
        float | None, typer.Option(help="fraction of the devices every round needs")
    ] = None,
    local_epochs: Annotated[int, typer.Option(help="local epochs per round")] = 1,
    batch_size: Annotated[int, typer.Option(help="local batch size")] = 32,
    lr: Annotated[float, typer.Option(help="local learning rate")] = 0.1,
    strategy: Annotated[
        str, typer.Option(help="fedavg, fedprox, fedtrimmedavg, krum, multikrum, fedmedian")
    ] = "fedavg",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="strategy parameter k=v, e.g. mu=0.01")
    ] = None,
    dp_epsilon: Annotated[
        float | None, typer.Option(help="local DP-SGD: epsilon per device over the job")
    ] = None,
    dp_delta: Annotated[float, typer.Option(help="local DP delta")] = 1e-5,
    dp_max_grad_norm: Annotated[float, typer.Option(help="local DP clipping norm")] = 1.0,
    dp_accountant: Annotated[str, typer.Option(help="prv | rdp")] = "prv",
    central_dp: Annotated[
        str | None,
        typer.Option(help='server-side DP as JSON, e.g. {"noise_multiplier": 1, "clipping_norm": 5}'),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="device-side dataset name (ledger key)")] = None,
    round_timeout: Annotated[float, typer.Option(help="seconds a phase waits for replies")] = 600.0,
    spec: Annotated[
        Path | None,
        typer.Option(help="the whole job as a JSON file (options override it)", exists=True, dir_okay=False),
    ] = None,
    watch: Annotated[bool, typer.Option(help="follow the rounds until the job ends")] = True,
    deploy: Annotated[
        bool, typer.Option(help="on success: translate to ONNX and roll it out to the participants")
    ] = False,
    waves: Annotated[
        str, typer.Option(help="--deploy: cumulative wave fractions (canary first)")
    ] = "0.1,1.0",
    max_failure_ratio: Annotated[float, typer.Option(help="--deploy: failures tolerated per wave")] = 0.0,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the job (and the rollout)")] = 6 * 3600,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start a federated-learning job; with --watch (default) show a live per-round table. With --deploy
    the result is translated to ONNX and rolled out in waves (canary first) with automatic rollback."""
    body: dict[str, Any] = json.loads(spec.read_text()) if spec else {}
    body["model"] = {**body.get("model", {}), "model_id": model}
    if version is not None:
        body["model"]["version"] = version
    if network:
        body["model"]["network"] = network
    if engine:
        body["engine"] = engine
    if device or selector or "participants" not in body:
        body["participants"] = {
            "device_ids": device or None,
            "selector": _pairs(selector, "--selector") or None,
        }
    body.update({"rounds": rounds, "local_epochs": local_epochs, "batch_size": batch_size, "lr": lr,
                 "round_timeout": round_timeout})  # fmt: skip
    if min_clients is not None:
        body["min_clients"] = min_clients
    if min_fraction is not None:
        body["min_fraction"] = min_fraction
    params = {k: _fl_number(v) for k, v in _pairs(param, "--param").items()}
    body["strategy"] = {"name": strategy, "params": {**body.get("strategy", {}).get("params", {}), **params}}
    privacy = dict(body.get("privacy") or {})
    if dp_epsilon is not None:
        privacy["dp"] = {"epsilon": dp_epsilon, "delta": dp_delta, "max_grad_norm": dp_max_grad_norm,
                         "accountant": dp_accountant}  # fmt: skip
    if central_dp:
        privacy["central_dp"] = json.loads(central_dp)
    body["privacy"] = privacy
    if dataset:
        body["data"] = {**body.get("data", {}), "dataset": dataset}
    with _api() as fc:
        created = fc.fl_run(body)
        err.print(f"FL job {created.job_id} {created.status}: {len(created.participants)} device(s), "
                  f"min {created.min_clients} per round")  # fmt: skip
        if not watch and not deploy:
            if as_json:
                _emit(created.model_dump(mode="json"), True)
            else:
                console.print(created.job_id)
            return
        job = _fl_watch(fc, created.job_id, as_json, timeout)
        _fl_outcome(job)
        rollout = None
        if deploy and job.status == "succeeded" and job.result is not None:
            translated = fc.translate(job.result.model_id, source_version=job.result.version)
            err.print(
                f"translated to ONNX v{translated.version} (max abs diff {translated.max_abs_diff:.2e})"
            )
            fractions = [float(w) for w in waves.split(",")]
            targets = [p.device_id for p in job.participants if p.state not in ("revoked", "skipped")]
            started = fc.deploy(
                job.result.model_id,
                translated.version,
                device_ids=None if selector else targets,
                selector=_pairs(selector, "--selector") or None,
                waves=fractions,
                max_failure_ratio=max_failure_ratio,
                auto_rollback=True,
            )
            err.print(f"deployment {started.deployment_id}: waves {fractions}, automatic rollback")
            rollout = fc.wait_deployment(started.deployment_id, timeout=timeout)
            err.print(f"deployment {rollout.id} {rollout.state} {rollout.error or ''}".rstrip())
    if as_json:
        out: dict[str, Any] = job.model_dump(mode="json")
        if rollout is not None:
            out = {"job": out, "deployment": rollout.model_dump(mode="json")}
        _emit(out, True)
    if job.status != "succeeded" or (rollout is not None and rollout.state != "succeeded"):
        raise typer.Exit(1)


@fl_app.command("watch")
def fl_watch(
    job_id: str,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 6 * 3600,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the final job as JSON (no live table)")
    ] = False,
) -> None:
    """Live per-round table until the FL job ends; exit 1 unless it succeeded."""
    with _api() as fc:
        job = _fl_watch(fc, job_id, as_json, timeout)
    if as_json:
        _emit(job.model_dump(mode="json"), True)
    _fl_outcome(job)
    if job.status != "succeeded":
        raise typer.Exit(1)


@fl_app.command("audit")
def fl_audit(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the audit document as JSON too")] = False,
) -> None:
    """Verify every round of an FL job from its records: each root recomputed from the leaves and proofs and
    compared with the chain, and the final model's hash lineage; exit 1 with the reason on a mismatch."""
    from controller.federation.audit_verify import AuditMismatch, verify_audit

    with _api() as fc:
        doc = fc.fl_audit(job_id)
    if as_json:
        console.print_json(doc.model_dump_json())
    try:
        lines = verify_audit(doc)
    except AuditMismatch as exc:
        err.print(f"FL job {job_id}: audit FAILED: {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    for line in lines:
        err.print(line, soft_wrap=True)
    err.print(f"FL job {job_id}: audit verified ({len(doc.rounds)} rounds on chain)", soft_wrap=True)


@fl_app.command("list")
def fl_list(
    status: Annotated[
        str | None, typer.Option(help="queued | running | succeeded | failed | cancelled")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="only this model's jobs")] = None,
    limit: int = 50,
    offset: int = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """FL jobs, newest first."""
    with _api() as fc:
        page = fc.fl_jobs(limit, offset, model_id=model, status=status)
    if as_json:
        console.print_json(page.model_dump_json())
        return
    table = Table("job_id", "status", "model", "rounds", "devices", "result", "epsilon", "error",
                  title=f"{page.total} FL jobs")  # fmt: skip
    for j in page.items:
        result = f"v{j.result.version}" if j.result else ""
        eps = f"{j.epsilon_spent:.3g}" if j.epsilon_spent is not None else ""
        table.add_row(j.job_id, j.status, j.model_id[:8], f"{j.rounds_completed}/{j.rounds}",
                      str(len(j.participants)), result, eps, (j.error or "")[:60])  # fmt: skip
    console.print(table)


@fl_app.command("cancel")
def fl_cancel(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Cancel a queued FL job or stop a running one."""
    with _api() as fc:
        job = fc.cancel_fl_job(job_id)
    if as_json:
        _emit(job.model_dump(mode="json"), True)
    else:
        err.print(f"FL job {job_id}: {job.status}")


@fl_app.command("privacy")
def fl_privacy(device_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The controller's mirror of a device's privacy spends (the device's ledger is the authority)."""
    with _api() as fc:
        mirror = fc.device_privacy(device_id)
    if as_json:
        _emit(mirror.model_dump(mode="json"), True)
        return
    table = Table("dataset", "epsilon spent", "remaining", "delta", "rounds", "refusals", "last job")
    for r in mirror.datasets:
        table.add_row(r.dataset, f"{r.epsilon_spent:.4g}",
                      "" if r.budget_remaining is None else f"{r.budget_remaining:.4g}",
                      "" if r.delta is None else f"{r.delta:g}", str(r.rounds), str(r.refusals),
                      r.last_job_id or "")  # fmt: skip
    console.print(table)


def _sim_table(rows: list[Any], title: str, dp: bool) -> Table:
    """The per-round table of ``fl simulate`` (rows: simulator.fl.experiment.RoundRow)."""

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.4g}"

    columns = ["round", "train loss", "train acc", "eval loss", "eval acc"]
    columns += ["epsilon max"] if dp else []
    columns += ["devices", "failed", "rejected", "bytes out/in", "s"]
    table = Table(*columns, title=title)
    for r in rows:
        cells = [
            str(r.round),
            num(r.train_loss),
            num(r.train_accuracy),
            num(r.eval_loss),
            num(r.eval_accuracy),
        ]
        cells += [num(r.epsilon_max)] if dp else []
        cells += [
            f"{r.participants}/{r.evaluated}",
            str(r.failures),
            str(r.rejected),
            f"{_size(r.bytes_sent)}/{_size(r.bytes_received)}",
            f"{r.seconds:.1f}",
        ]
        table.add_row(*cells)
    return table


def _size(n: int) -> str:
    """Bytes in decimal units: 950 B, 17.2 kB, 3.4 MB."""
    if n < 1000:
        return f"{n} B"
    return f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1_000_000:.1f} MB"


def _usage_error(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)  # plain text: one line, never wrapped or read as markup
    return typer.Exit(2)


@fl_app.command("simulate")
def fl_simulate(
    devices: Annotated[int, typer.Option(help="simulated devices (virtual SuperNodes)")] = 10,
    alpha: Annotated[
        float | None, typer.Option(help="Dirichlet label skew (small: few classes per device; default 0.5)")
    ] = None,
    iid: Annotated[bool, typer.Option("--iid", help="deal the digits out IID instead of --alpha")] = False,
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 10,
    strategy: Annotated[
        str,
        typer.Option(
            help='fedavg, fedavgm, fedprox, ... or a JSON spec: {"name": "fedprox", "proximal_mu": 0.01}'
        ),
    ] = "fedavg",
    model: Annotated[str, typer.Option(help="digits-linear, digits-mlp, digits-cnn or module:function")] = (
        "digits-mlp"
    ),
    local_epochs: Annotated[int, typer.Option(help="local epochs per round")] = 1,
    batch_size: Annotated[int, typer.Option(help="local batch size")] = 32,
    lr: Annotated[float, typer.Option(help="local learning rate")] = 0.1,
    momentum: Annotated[float, typer.Option(help="local SGD momentum")] = 0.0,
    dp_epsilon: Annotated[
        float | None, typer.Option(help="local DP-SGD: target epsilon per device over the run")
    ] = None,
    dp_delta: Annotated[float, typer.Option(help="local DP delta")] = 1e-5,
    dp_max_grad_norm: Annotated[float, typer.Option(help="local DP clipping norm")] = 1.0,
    min_devices: Annotated[
        int | None,
        typer.Option(
            help="devices every round needs (default: all; lower it with a fraction_train in --strategy)"
        ),
    ] = None,
    min_examples: Annotated[
        int,
        typer.Option(help="training digits each device gets at least (Dirichlet; lower it for many devices)"),
    ] = 10,
    seed: Annotated[int, typer.Option(help="partition, initial parameters and shuffling seed")] = 0,
    cpus: Annotated[
        int | None, typer.Option(help="ClientApps running at once (Ray CPUs; default: min(cores, devices))")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="save the final global parameters here (.npz)", dir_okay=False)
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(help="keep the devices' state (privacy ledgers) here (default: a temporary directory)"),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="show Flower's own log")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the result as JSON on stdout (progress on stderr)")
    ] = False,
) -> None:
    """Run the fedge ServerApp and ClientApp in Flower's simulation runtime (Ray, on this machine) over
    scikit-learn's digits split across --devices simulated devices: no controller needed. Prints a
    per-round table (train loss, eval accuracy, max epsilon over the devices) and a summary."""
    import contextlib
    import os
    import tempfile

    from simulator.fl.experiment import (
        Experiment,
        ExperimentError,
        MissingDependency,
        check_runtime,
        quiet_flower,
        run_experiment,
        stdout_to_stderr,
    )

    if iid and alpha is not None:
        raise _usage_error("--alpha and --iid exclude each other (--iid: no label skew)")
    experiment = Experiment(
        devices=devices,
        alpha=None if iid else (0.5 if alpha is None else alpha),
        rounds=rounds,
        strategy=strategy,
        model=model,
        local_epochs=local_epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        dp_epsilon=dp_epsilon,
        dp_delta=dp_delta,
        dp_max_grad_norm=dp_max_grad_norm,
        min_devices=min_devices,
        min_examples=min_examples,
        seed=seed,
        cpus=cpus or max(1, min(os.cpu_count() or 1, devices)),
    )
    problems = experiment.problems()
    if problems:
        raise _usage_error(problems[0])
    try:
        check_runtime(experiment)
        data = experiment.data()
    except ExperimentError as exc:
        raise _usage_error(str(exc)) from None
    except MissingDependency as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    split = "IID" if experiment.alpha is None else f"Dirichlet alpha {experiment.alpha:g}"
    dp = experiment.dp
    name = strategy.strip()
    if name.startswith("{"):  # a JSON spec (check_runtime parsed it): its name in the title
        name = str(json.loads(name).get("name", "?")) + " (spec)"
    title = (
        f"fl simulate: {devices} devices ({split}), {experiment.model}, {name}, "
        f"{local_epochs} local epoch(s)" + (f", local DP eps {dp_epsilon:g}" if dp else "")
    )
    rows: list[Any] = []

    def progress(row: Any) -> None:
        rows.append(row)
        acc = "" if row.eval_accuracy is None else f", eval acc {row.eval_accuracy:.4f}"
        eps = "" if row.epsilon_max is None else f", epsilon max {row.epsilon_max:.4g}"
        loss = "" if row.train_loss is None else f": train loss {row.train_loss:.4g}"
        typer.echo(f"round {row.round}/{rounds}{loss}{acc}{eps} ({row.seconds:.1f} s)", err=True)

    with contextlib.ExitStack() as stack:
        root = state_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-fl-sim-")))
        root.mkdir(parents=True, exist_ok=True)
        if not verbose:
            stack.enter_context(quiet_flower())
        if as_json:
            stack.enter_context(stdout_to_stderr())
            on_round = progress
        else:
            from rich.live import Live

            live = stack.enter_context(
                Live(_sim_table(rows, title, dp), console=console, refresh_per_second=2)
            )

            def on_round(row: Any) -> None:
                rows.append(row)
                live.update(_sim_table(rows, title, dp))

        try:
            result = run_experiment(experiment, root, on_round=on_round, output_path=output, data=data)
        except ExperimentError as exc:
            raise _usage_error(str(exc)) from None
        except Exception as exc:  # the runtime failed: one line, not a traceback
            typer.echo(f"error: the simulation failed: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(1) from None
    summary = result.summary()
    if not as_json and not console.is_terminal:
        console.line()  # the live table ends without a newline when stdout is not a terminal
    if as_json:
        _emit(result.to_json(), True)
    else:
        if len(result.rows) != len(rows):
            console.print(_sim_table(result.rows, title, dp))
        acc = summary["accuracy"]
        parts = [
            f"eval accuracy {acc:.4f}" if acc is not None else "no evaluation",
            f"after {summary['rounds_completed']}/{rounds} rounds",
            f"{summary['train_examples']} training digits ({summary['examples_per_device']['min']}-"
            f"{summary['examples_per_device']['max']} per device), {summary['test_examples']} test",
        ]
        if dp:
            eps = summary["epsilon"]
            parts.append(
                f"max epsilon {eps:.4f} over {summary['devices_accounted']} devices' ledgers "
                f"(delta {dp_delta:g})"
                if eps is not None
                else "no device accounted a private round"
            )
        parts.append(f"{summary['wall_s']:.1f} s (median round {summary['median_round_s']} s)")
        console.print("summary: " + "; ".join(parts), soft_wrap=True)
        if result.output_path:
            console.print(f"final parameters: {result.output_path}", soft_wrap=True)
    if len(result.rows) < rounds:
        raise typer.Exit(1)


def _mount_optional() -> None:
    """Subcommands from optional extras (grid) appear when their extra is installed."""
    import importlib

    try:
        grid_app = importlib.import_module("simulator.grid.cli").app
    except ImportError:
        return
    app.add_typer(grid_app, name="grid", help="Grid simulator and RL load shifting (extra: grid).")


def main() -> None:
    """Run the CLI: usage errors exit 2 (click), failures exit 1 with one line; ``--debug`` (anywhere on
    the command line) shows the traceback instead."""
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv = [a for a in sys.argv if a != "--debug"]
    _mount_optional()
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        if debug:
            raise
        err.print(f"[red]error[/red] {one_line_error(exc, _state.get('url'))}", highlight=False)
        sys.exit(1)


def one_line_error(exc: BaseException, url: str | None) -> str:
    """An unexpected failure as one sentence with the fix where there is one."""
    import httpx

    target = url or "the controller (set --controller or FEDGE_URL)"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach {target}: {exc}. Is it running, and is the URL right?"
    if isinstance(exc, httpx.TimeoutException):
        return f"{target} did not answer in time ({type(exc).__name__}); try again or raise the timeout"
    if isinstance(exc, httpx.HTTPError):
        return f"talking to {target} failed: {exc}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return f"{type(exc).__name__}: {exc} (run again with --debug for the traceback)"


if __name__ == "__main__":
    main()
