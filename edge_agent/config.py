"""Agent settings (environment prefix ``FEDGE_AGENT_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    """One settings class for the agent process."""

    model_config = SettingsConfigDict(env_prefix="FEDGE_AGENT_", env_file=None, extra="ignore")

    state_dir: Path = Field(default=Path("/var/lib/fedge-agent"), description="identity, models, pointers")
    api_host: str = Field(default="127.0.0.1", description="local inference API bind address")
    api_port: int = Field(default=8470, ge=0, le=65535)
    poll_interval: float = Field(default=10.0, gt=0, description="seconds between desired-state polls")
    max_backoff: float = Field(default=300.0, gt=0, description="longest wait after repeated errors")
    token_ttl: int = Field(default=300, ge=10, le=300, description="lifetime of device-signed API tokens")
    providers: list[str] | None = Field(
        default=None, description="ONNX Runtime providers in order of preference (default: auto)"
    )
    http_timeout: float = Field(default=30.0, gt=0)
    controller_ca: Path | None = Field(
        default=None,
        description="PEM CA the controller's TLS certificate must chain to (pinned; default: the one "
        "pinned at enrollment in <state_dir>/controller-ca.pem, else the system store)",
    )
    log_format: Literal["text", "json"] = Field(default="text", description="log lines: text or JSON")
    metrics: bool = Field(
        default=True,
        description="serve GET /metrics on metrics_host:metrics_port even with the monitor off",
    )
    keep_serving_when_revoked: bool = Field(
        default=False, description="serve the last model after the controller revoked the device"
    )
    cert_renew_fraction: float = Field(
        default=0.3, gt=0, lt=1, description="renew the certificate when less than this share of it is left"
    )
    cert_renew_retry: float = Field(default=60.0, gt=0, description="seconds between failed renewal tries")
    preprocess: str | None = Field(
        default=None,
        description="module:function turning image requests into model inputs (default: built-in)",
    )
    postprocess: str | None = Field(
        default=None, description="module:function adding fields to responses (default: top class + score)"
    )
    mqtt: bool = Field(default=True, description="use the broker named at enrollment (if any) for push")
    mqtt_min_backoff: int = Field(default=1, ge=1, description="first reconnect delay to the broker (s)")
    mqtt_max_backoff: int = Field(default=30, ge=1, description="longest reconnect delay to the broker (s)")
    # federated learning (fl-join commands; the SuperNode needs the train extra: fedge[agent,train])
    fl_enabled: bool = Field(
        default=False, description="take part in federated learning: accept fl-join commands (opt-in)"
    )
    fl_data_path: Path | None = Field(
        default=None,
        description="the device's training data (.npz: x, y, optional x_test/y_test); never sent",
    )
    fl_dataset: str | None = Field(
        default=None, description="the data's name for jobs and the privacy ledger (default: the file's stem)"
    )
    fl_privacy_budget: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="epsilon the device may spend on its dataset, all jobs together (0: no private round)",
    )
    fl_privacy_delta: float = Field(default=1e-5, gt=0, lt=1, description="the delta the device accounts at")
    fl_privacy_accountant: Literal["prv", "rdp"] = Field(default="prv", description="the device's accountant")
    fl_require_dp: bool = Field(default=False, description="train only rounds with local DP (refuse others)")
    # monitoring (edge_agent.monitor; needs the monitor extra: fedge[agent,monitor])
    monitor: bool = Field(
        default=True, description="monitor inference: metrics, drift, events (if installed)"
    )
    metrics_host: str = Field(default="127.0.0.1", description="bind address of GET /metrics (Prometheus)")
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="port of GET /metrics (0: any free port, written to <state_dir>/monitor.json; "
        "set e.g. 8471 for a fixed Prometheus scrape target)",
    )
    monitor_queue_size: int = Field(default=10_000, ge=1, description="observations waiting; beyond: dropped")
    monitor_summary_seconds: float = Field(default=60.0, gt=0, description="seconds between summaries")
    drift_window: int = Field(default=96, ge=2, description="inputs per data-drift window")
    drift_step: int | None = Field(default=None, ge=1, description="inputs between checks (default: window)")
    drift_method: str | None = Field(
        default="wasserstein",
        description="Evidently stattest for numerical features (None: Evidently's choice)",
    )
    drift_threshold: float | None = Field(default=0.3, gt=0, description="the stattest's drift threshold")
    drift_share: float = Field(
        default=0.5, gt=0, le=1, description="share of drifted features = dataset drift"
    )
    error_window: int = Field(
        default=96, ge=1, description="labelled predictions per ME/MAE/MAPE/bias window"
    )
    # online learning (edge_agent.online; river: the monitor extra, torch: the train extra)
    online_config: Path | None = Field(
        default=None, description="learner file (.toml or .json, see docs/online.md); None: no learners"
    )
