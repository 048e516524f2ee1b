"""Python SDK for the fedge controller REST API (typed, httpx). No server dependencies.

    from controller.client import FedgeClient
    with FedgeClient("http://127.0.0.1:8400", token="fedge_...") as fc:
        ds = fc.push_dataset("digits.npz", {"organization_id": "org-1", "samples_dimension": "(1,8,8)"})
        m = fc.register_model({"model_params": {...}, "data_params": {"dataset_id": ds.dataset_id}})
        job = fc.wait_job(fc.train(m.model_id).job_id)  # JobOut: job.status, job.metrics, ...

Every method returns the pydantic model its route declares (``controller.schemas``,
``controller.registry.schemas``), validated on the way in; ``model.model_dump(mode="json")`` gives the
route's JSON back. Only schema-less routes return plain JSON (``contract``: the decoded record contract,
whose shape depends on its kind). Errors are raised as ``FedgeAPIError`` carrying the server's RFC 7807
problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from controller.registry.schemas import (
    ArtifactStored,
    DatasetCreated,
    DatasetOut,
    ModelCreated,
    ModelOut,
    ModelProvenance,
    Page,
    Provenance,
    VersionOut,
)
from controller.schemas.commands import CommandOut, CommandPage, TelemetryPage
from controller.schemas.deployments import DeploymentCreated, DeploymentOut, DeploymentPage
from controller.schemas.devices import DeviceOut, EnrollmentTokenOut
from controller.schemas.drift import DriftActionPage, DriftPolicyIn, DriftPolicyOut
from controller.schemas.events import DeviceEventPage
from controller.schemas.fl import (
    TERMINAL_FL_STATES,
    DevicePrivacyOut,
    FlJobCreated,
    FlJobIn,
    FlJobOut,
    FlJobPage,
)
from controller.schemas.fl_audit import FlAuditOut
from controller.schemas.health import HealthOut, ReadinessOut
from controller.schemas.jobs import TERMINAL_JOB_STATES, JobCreated, JobOut
from controller.schemas.tokens import TokenCreated, TokenOut, TokenPage
from controller.schemas.translation import TranslateResult
from fedge_common.files import atomic_writer
from fedge_protocol import paths

Progress = Callable[[int], None]
CHUNK = 1024 * 1024


class FedgeAPIError(Exception):
    """A non-2xx answer; ``problem`` is the RFC 7807 body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.title = str(problem.get("title", "error"))
        self.detail = str(problem.get("detail", ""))
        super().__init__(f"{status} {self.title}: {self.detail}")


class IntegrityError(Exception):
    """A download's SHA-256 differs from what the server declared."""


class _ProgressReader:
    """File wrapper that reports bytes read (for upload progress bars)."""

    def __init__(self, fh: IO[bytes], progress: Progress | None) -> None:
        self.fh = fh
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        if data and self.progress:
            self.progress(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while data := self.read(CHUNK):
            yield data


class FedgeClient:
    """One client per controller; safe to reuse across calls (connection pooling)."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("FEDGE_URL") or "http://127.0.0.1:8400").rstrip("/")
        token = token or os.environ.get("FEDGE_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, read=max(timeout, 300.0)),
            transport=transport,
        )

    def __enter__(self) -> FedgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------ plumbing
    @staticmethod
    def _raise(resp: httpx.Response) -> None:
        if resp.is_success or resp.status_code == 304:
            return
        try:
            resp.read()
            problem = resp.json()
            if not isinstance(problem, dict):
                problem = {"detail": str(problem)}
        except (ValueError, httpx.ResponseNotRead):
            problem = {"title": resp.reason_phrase, "detail": resp.text[:500]}
        raise FedgeAPIError(resp.status_code, problem)

    def _json(self, method: str, url: str, **kw: Any) -> Any:
        resp = self.http.request(method, url, **kw)
        self._raise(resp)
        return resp.json() if resp.content else None

    def _download(
        self, url: str, dest: Path, progress: Progress | None, params: dict[str, Any] | None
    ) -> str:
        """Stream to ``dest`` (atomically), verify against the X-Content-SHA256 header; return sha256."""
        sha = hashlib.sha256()
        with self.http.stream("GET", url, params=params) as resp:
            self._raise(resp)
            expected = resp.headers.get("x-content-sha256")
            with atomic_writer(dest, mode=None, fsync=False) as fh:  # dest untouched unless it checks out
                for chunk in resp.iter_bytes(CHUNK):
                    fh.write(chunk)
                    sha.update(chunk)
                    if progress:
                        progress(len(chunk))
                if expected and sha.hexdigest() != expected:
                    raise IntegrityError(f"downloaded sha256 {sha.hexdigest()} != declared {expected}")
        return sha.hexdigest()

    def content_length(self, url: str, params: dict[str, Any] | None = None) -> int | None:
        """Size of a download, from a HEAD-like streamed GET's headers (closed before the body)."""
        with self.http.stream("GET", url, params=params) as resp:
            self._raise(resp)
            value = resp.headers.get("content-length")
        return int(value) if value else None

    # -------------------------------------------------------------- health
    def health(self) -> HealthOut:
        """Liveness (no credential needed)."""
        return HealthOut.model_validate(self._json("GET", "/healthz"))

    def ready(self) -> ReadinessOut:
        """Readiness of database, store and chain; a 503 ``FedgeAPIError`` names what is down."""
        return ReadinessOut.model_validate(self._json("GET", "/readyz"))

    # ------------------------------------------------------------ datasets
    def push_dataset(
        self, path: str | Path, metadata: dict[str, Any], *, progress: Progress | None = None
    ) -> DatasetCreated:
        """Upload a dataset file (streamed) with its metadata."""
        path = Path(path)
        with open(path, "rb") as fh:
            files = {"dataset": (path.name, _ProgressReader(fh, progress), "application/octet-stream")}
            data = {"metadata": json.dumps(metadata)}
            return DatasetCreated.model_validate(self._json("POST", "/v1/datasets", files=files, data=data))

    def list_datasets(self, limit: int = 50, offset: int = 0) -> Page[DatasetOut]:
        raw = self._json("GET", "/v1/datasets", params={"limit": limit, "offset": offset})
        return Page[DatasetOut].model_validate(raw)

    def dataset_metadata(self, dataset_id: str) -> DatasetOut:
        return DatasetOut.model_validate(self._json("GET", f"/v1/datasets/{dataset_id}/metadata"))

    def download_dataset(self, dataset_id: str, dest: str | Path, *, progress: Progress | None = None) -> str:
        """Download a dataset to ``dest``; verifies SHA-256; returns it."""
        return self._download(f"/v1/datasets/{dataset_id}", Path(dest), progress, None)

    # -------------------------------------------------------------- models
    def register_model(self, metadata: dict[str, Any], *, train_image: str | None = None) -> ModelCreated:
        """Register a model (JSON body, or the seed's multipart form when ``train_image`` is given)."""
        if train_image:
            # (None, value) parts force multipart/form-data without a filename, as curl --form does
            parts = [
                ("metadata", (None, json.dumps(metadata).encode())),
                ("train_image", (None, train_image.encode())),
            ]
            raw = self._json("POST", "/v1/models", files=parts)
        else:
            raw = self._json("POST", "/v1/models", json=metadata)
        return ModelCreated.model_validate(raw)

    def list_models(self, limit: int = 50, offset: int = 0) -> Page[ModelOut]:
        raw = self._json("GET", "/v1/models", params={"limit": limit, "offset": offset})
        return Page[ModelOut].model_validate(raw)

    def model_metadata(self, model_id: str) -> ModelOut:
        return ModelOut.model_validate(self._json("GET", f"/v1/models/{model_id}/metadata"))

    def model_versions(self, model_id: str) -> list[VersionOut]:
        return [VersionOut.model_validate(v) for v in self._json("GET", f"/v1/models/{model_id}/versions")]

    def download_model(
        self,
        model_id: str,
        dest: str | Path,
        *,
        version: int | None = None,
        kind: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Download the newest trained artifact (or a version/kind); verifies SHA-256; returns it."""
        params = {k: v for k, v in {"version": version, "kind": kind}.items() if v is not None}
        return self._download(f"/v1/models/{model_id}", Path(dest), progress, params or None)

    def put_artifact(
        self,
        model_id: str,
        path: str | Path,
        *,
        kind: str = "trained",
        fmt: str | None = None,
        source_version: int | None = None,
        progress: Progress | None = None,
    ) -> ArtifactStored:
        """Store an artifact as a new model version (job or admin credential), streamed."""
        path = Path(path)
        params: dict[str, Any] = {"kind": kind, "filename": path.name}
        if fmt:
            params["format"] = fmt
        if source_version:
            params["source_version"] = source_version
        with open(path, "rb") as fh:
            resp = self.http.put(
                f"/v1/models/{model_id}/artifact",
                params=params,
                content=iter(_ProgressReader(fh, progress)),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(path.stat().st_size),
                },
            )
        self._raise(resp)
        return ArtifactStored.model_validate(resp.json())

    def register_model_with_package(self, metadata: dict[str, Any], package: str | Path) -> ModelCreated:
        """Register a model whose python training code is uploaded (.tar.gz / .zip / wheel)."""
        package = Path(package)
        with open(package, "rb") as fh:
            parts: list[tuple[str, Any]] = [
                ("metadata", (None, json.dumps(metadata).encode())),
                ("training_package", (package.name, fh, "application/octet-stream")),
            ]
            return ModelCreated.model_validate(self._json("POST", "/v1/models", files=parts))

    # ---------------------------------------------------------- training
    def train(self, model_id: str, hyperparameters: dict[str, Any] | None = None) -> JobCreated:
        """Queue a training job; returns its id and status."""
        body = {"hyperparameters": hyperparameters or {}}
        return JobCreated.model_validate(self._json("POST", f"/v1/models/{model_id}/train", json=body))

    def job(self, job_id: str) -> JobOut:
        """Job status, metrics, error, log tail."""
        return JobOut.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, model_id: str | None = None) -> list[JobOut]:
        """Jobs, newest first (optionally of one model)."""
        params = {"model_id": model_id} if model_id else None
        return [JobOut.model_validate(j) for j in self._json("GET", "/v1/jobs", params=params)]

    def cancel_job(self, job_id: str) -> JobOut:
        """Cancel a queued or running job; returns its state."""
        return JobOut.model_validate(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def job_logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        """The job's log lines (streamed; ``follow`` keeps reading until the job ends)."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": follow}) as resp:
            self._raise(resp)
            yield from resp.iter_lines()

    def wait_job(self, job_id: str, timeout: float = 3600, poll: float = 0.5) -> JobOut:
        """Poll until the job ends; returns its final state (``TimeoutError`` after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.status in TERMINAL_JOB_STATES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(poll)

    def translate(
        self, model_id: str, *, source_version: int | None = None, quantize: bool = False
    ) -> TranslateResult:
        """Translate a trained version to ONNX (validated against the source model)."""
        body = {"source_version": source_version, "quantize": quantize}
        return TranslateResult.model_validate(
            self._json("POST", f"/v1/models/{model_id}/translate", json=body)
        )

    # ---------------------------------------------------------- provenance
    def dataset_provenance(self, dataset_id: str) -> Provenance:
        """Stored object vs registry vs chain record for a dataset."""
        return Provenance.model_validate(self._json("GET", f"/v1/datasets/{dataset_id}/provenance"))

    def model_provenance(self, model_id: str) -> ModelProvenance:
        """The model's chain record and the check of each version."""
        return ModelProvenance.model_validate(self._json("GET", f"/v1/models/{model_id}/provenance"))

    def contract(self, address: str) -> dict[str, Any]:
        """Decoded metadata of a record contract (admin): the seed's JSON shape, which depends on the
        contract's kind, so plain JSON (the route declares no schema)."""
        result: dict[str, Any] = self._json("GET", f"/v1/contracts/{address}")
        return result

    # -------------------------------------------------------------- tokens
    def create_token(
        self,
        name: str,
        role: str,
        *,
        ttl_seconds: int | None = None,
        model_id: str | None = None,
        subject: str | None = None,
    ) -> TokenCreated:
        """Mint a credential (admin); ``token`` is the secret, shown once."""
        body = {
            "name": name,
            "role": role,
            "ttl_seconds": ttl_seconds,
            "model_id": model_id,
            "subject": subject,
        }
        return TokenCreated.model_validate(self._json("POST", "/v1/tokens", json=body))

    def list_tokens(self, role: str | None = None, active: bool | None = None) -> list[TokenOut]:
        """Every credential (never the secret), following the pages."""
        out: list[TokenOut] = []
        params: dict[str, str | int] = {"limit": 500}
        if role is not None:
            params["role"] = role
        if active is not None:
            params["active"] = "true" if active else "false"
        while True:
            page = TokenPage.model_validate(
                self._json("GET", "/v1/tokens", params={**params, "offset": len(out)})
            )
            out.extend(page.items)
            if not page.items or len(out) >= page.total:
                return out

    def revoke_token(self, token_id: str) -> None:
        self._json("DELETE", f"/v1/tokens/{token_id}")

    # ------------------------------------------------------------- fleet
    def enrollment_token(
        self, labels: dict[str, str] | None = None, ttl_seconds: int = 3600
    ) -> EnrollmentTokenOut:
        """A one-time, expiring enrollment token (admin)."""
        body = {"labels": labels or {}, "ttl_seconds": ttl_seconds}
        return EnrollmentTokenOut.model_validate(self._json("POST", "/v1/enrollment-tokens", json=body))

    def devices(self, limit: int | None = None, offset: int = 0) -> list[DeviceOut]:
        """Devices, oldest enrolled first: all, or a page (``limit``/``offset``)."""
        params: dict[str, int] = {"offset": offset} if offset else {}
        if limit is not None:
            params["limit"] = limit
        return [DeviceOut.model_validate(d) for d in self._json("GET", "/v1/devices", params=params)]

    def device(self, device_id: str) -> DeviceOut:
        return DeviceOut.model_validate(self._json("GET", f"/v1/devices/{device_id}"))

    def revoke_device(self, device_id: str) -> None:
        self._json("DELETE", f"/v1/devices/{device_id}")

    def deploy(
        self,
        model_id: str,
        version: int | None = None,
        *,
        device_ids: list[str] | None = None,
        selector: dict[str, str] | None = None,
        waves: list[float] | None = None,
        max_failure_ratio: float = 0.0,
        auto_rollback: bool = True,
        reference_dataset_id: str | None = None,
    ) -> DeploymentCreated:
        """Start a deployment; returns its id (``.deployment_id``). ``reference_dataset_id``: a registered
        data set the devices check drift against."""
        body: dict[str, Any] = {
            "model_id": model_id,
            "version": version,
            "device_ids": device_ids,
            "selector": selector,
            "strategy": {"waves": waves} if waves else "all-at-once",
            "max_failure_ratio": max_failure_ratio,
            "auto_rollback": auto_rollback,
        }
        if reference_dataset_id is not None:
            body["reference_dataset_id"] = reference_dataset_id
        return DeploymentCreated.model_validate(self._json("POST", "/v1/deployments", json=body))

    def deployment(self, deployment_id: str) -> DeploymentOut:
        """The rollout and each device's state."""
        return DeploymentOut.model_validate(self._json("GET", f"/v1/deployments/{deployment_id}"))

    def deployments(
        self, state: str | None = None, model_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> DeploymentPage:
        """One page of deployments, newest first (filters: state, model)."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        if model_id:
            params["model_id"] = model_id
        return DeploymentPage.model_validate(self._json("GET", "/v1/deployments", params=params))

    def cancel_deployment(self, deployment_id: str, rollback: bool = False) -> DeploymentOut:
        """Stop a rolling deployment; ``rollback`` also reverts devices that installed it."""
        body = {"rollback": rollback}
        return DeploymentOut.model_validate(
            self._json("POST", f"/v1/deployments/{deployment_id}/cancel", json=body)
        )

    def wait_deployment(self, deployment_id: str, timeout: float = 3600, poll: float = 1.0) -> DeploymentOut:
        """Poll until the rollout leaves ``rolling`` (or ``timeout`` passed); returns its last state."""
        deadline = time.monotonic() + timeout
        while True:
            dep = self.deployment(deployment_id)
            if dep.state != "rolling" or time.monotonic() > deadline:
                return dep
            time.sleep(poll)

    # ---------------------------------------------------------- commands
    def create_command(
        self,
        device_id: str,
        model_id: str,
        *,
        kind: str = "grid-run",
        version: int | None = None,
        days: str | list[int] = "test",
    ) -> CommandOut:
        """Queue a command for a device (``grid-run``: the grid simulator with a registered policy)."""
        body = {"kind": kind, "model_id": model_id, "version": version, "days": days}
        return CommandOut.model_validate(self._json("POST", f"/v1/devices/{device_id}/commands", json=body))

    def grid_run(
        self, device_id: str, model_id: str, version: int | None = None, days: str | list[int] = "test"
    ) -> CommandOut:
        """Start ``fedge-agent grid run`` on a device; returns the command (``id``, ``state``...)."""
        return self.create_command(device_id, model_id, version=version, days=days)

    def command(self, device_id: str, command_id: str) -> CommandOut:
        """One command: state, result summary, error."""
        return CommandOut.model_validate(self._json("GET", f"/v1/devices/{device_id}/commands/{command_id}"))

    def commands(self, device_id: str, limit: int = 50, offset: int = 0) -> CommandPage:
        """A page of the device's commands, newest first."""
        params = {"limit": limit, "offset": offset}
        return CommandPage.model_validate(
            self._json("GET", f"/v1/devices/{device_id}/commands", params=params)
        )

    def wait_command(
        self, device_id: str, command_id: str, timeout: float = 3600, poll: float = 1.0
    ) -> CommandOut:
        """Poll until the command succeeded or failed (or ``timeout`` passed); returns its last state."""
        deadline = time.monotonic() + timeout
        while True:
            cmd = self.command(device_id, command_id)
            if cmd.state.final or time.monotonic() > deadline:
                return cmd
            time.sleep(poll)

    def telemetry(
        self,
        device_id: str,
        *,
        command_id: str | None = None,
        type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> TelemetryPage:
        """A page of the device's stored telemetry (outbox order), optionally of one command or type."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if command_id:
            params["command_id"] = command_id
        if type:
            params["type"] = type
        raw = self._json("GET", f"/v1/devices/{device_id}/telemetry", params=params)
        return TelemetryPage.model_validate(raw)

    def device_events(
        self,
        device_id: str,
        *,
        type: str | None = None,
        model_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> DeviceEventPage:
        """A page of the device's events (drift alarms), newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if type:
            params["type"] = type
        if model_id:
            params["model_id"] = model_id
        raw = self._json("GET", paths.EVENTS.format(device_id=device_id), params=params)
        return DeviceEventPage.model_validate(raw)

    # ---------------------------------------------------------------- drift policy
    def set_drift_policy(self, model_id: str, policy: DriftPolicyIn | dict[str, Any]) -> DriftPolicyOut:
        """Set what a drift event on the model does (``on_drift``: none, notify, retrain)."""
        body = policy.model_dump(mode="json") if isinstance(policy, DriftPolicyIn) else policy
        raw = self._json("PUT", f"/v1/models/{model_id}/drift-policy", json=body)
        return DriftPolicyOut.model_validate(raw)

    def drift_policy(self, model_id: str) -> DriftPolicyOut:
        return DriftPolicyOut.model_validate(self._json("GET", f"/v1/models/{model_id}/drift-policy"))

    def drift_actions(
        self, model_id: str, *, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> DriftActionPage:
        """What the model's drift policy did, newest first (steps: job, translated version, deployment)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        raw = self._json("GET", f"/v1/models/{model_id}/drift-actions", params=params)
        return DriftActionPage.model_validate(raw)

    # ---------------------------------------------------------- federated learning
    def fl_run(self, spec: FlJobIn | dict[str, Any]) -> FlJobCreated:
        """Queue a federated-learning job (``FlJobIn`` or its JSON); returns its id and the devices chosen."""
        body = spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, FlJobIn) else spec
        return FlJobCreated.model_validate(self._json("POST", "/v1/fl/jobs", json=body))

    def fl_job(self, job_id: str) -> FlJobOut:
        """Status, per-round metrics, participants, privacy spent, result and chain record."""
        return FlJobOut.model_validate(self._json("GET", f"/v1/fl/jobs/{job_id}"))

    def fl_jobs(
        self,
        limit: int = 50,
        offset: int = 0,
        *,
        model_id: str | None = None,
        status: str | None = None,
    ) -> FlJobPage:
        """A page of FL jobs, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if model_id:
            params["model_id"] = model_id
        if status:
            params["status"] = status
        return FlJobPage.model_validate(self._json("GET", "/v1/fl/jobs", params=params))

    def fl_audit(self, job_id: str) -> FlAuditOut:
        """Every aggregated round of the job as recorded on chain, with each participant's Merkle leaf and
        inclusion proof; check it with ``controller.federation.audit_verify.verify_audit``."""
        return FlAuditOut.model_validate(self._json("GET", f"/v1/fl/jobs/{job_id}/audit"))

    def cancel_fl_job(self, job_id: str) -> FlJobOut:
        """Cancel a queued FL job or stop a running one; returns its state."""
        return FlJobOut.model_validate(self._json("POST", f"/v1/fl/jobs/{job_id}/cancel"))

    def wait_fl_job(
        self,
        job_id: str,
        timeout: float = 6 * 3600,
        poll: float = 2.0,
        on_update: Callable[[FlJobOut], None] | None = None,
    ) -> FlJobOut:
        """Poll until the FL job ends (``TimeoutError`` after ``timeout``); ``on_update`` sees every poll."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.fl_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.status in TERMINAL_FL_STATES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"FL job {job_id} still {job.status} after {timeout} s")
            time.sleep(poll)

    def device_privacy(self, device_id: str) -> DevicePrivacyOut:
        """The controller's mirror of a device's privacy spends (per dataset) and its FL jobs."""
        return DevicePrivacyOut.model_validate(self._json("GET", f"/v1/devices/{device_id}/privacy"))


__all__ = ["FedgeAPIError", "FedgeClient", "IntegrityError"]
