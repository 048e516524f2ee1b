"""ControllerSettings: the one settings class of the controller process (env prefix ``FEDGE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControllerSettings(BaseSettings):
    """Every knob of the controller. With no configuration it runs on embedded defaults that keep data
    across restarts: a SQLite file and a local-filesystem artifact store under ``data_dir``."""

    model_config = SettingsConfigDict(env_prefix="FEDGE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path(".fedge"), description="Holds every embedded default's data.")
    host: str = Field(default="127.0.0.1", description="Bind address of `fedge-controller serve`.")
    port: int = Field(default=8400, description="Port of `fedge-controller serve`.")
    public_url: str | None = Field(default=None, description="URL clients use to reach the controller.")

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: sqlite file <data_dir>/fedge.db. "
        "PostgreSQL: postgresql+psycopg://user:pw@host:5432/db",
    )

    storage_backend: Literal["local", "s3"] = Field(default="local")
    s3_endpoint: str | None = Field(default=None, description="host:port of the S3 server.")
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_secure: bool = Field(default=True, description="Use HTTPS to reach S3.")
    s3_region: str = "us-east-1"
    s3_presigned_downloads: bool = Field(
        default=True,
        description="Devices download artifacts straight from S3 through a short-lived presigned URL "
        "(a 307 from the download route; the device checks the SHA-256 against the signed chain hash); "
        "false: the controller streams the bytes itself. No effect with the local store.",
    )
    s3_public_endpoint: str | None = Field(
        default=None,
        description="host:port of S3 as devices reach it, for presigned URLs (default: s3_endpoint); "
        "the scheme follows s3_secure.",
    )
    s3_presign_seconds: int = Field(
        default=300, ge=10, le=3600, description="Lifetime of a presigned download URL, in seconds."
    )
    bucket_prefix: str = Field(default="", description="Prefix for bucket names (datasets, models).")

    chain_backend: Literal["evm", "jsonrpc"] = Field(default="evm")
    chain_rpc_url: str | None = Field(default=None, description="JSON-RPC URL for chain_backend=jsonrpc.")
    chain_private_key: SecretStr | None = Field(
        default=None, description="Controller signing key (hex). Default: generated in data_dir (0600)."
    )
    chain_id: int | None = None

    max_upload_bytes: int = Field(default=2 * 1024**3, description="Largest accepted upload, in bytes.")
    max_metadata_bytes: int = Field(default=64 * 1024, description="Largest metadata JSON field.")
    pending_grace_seconds: int = Field(
        default=3600,
        description="Uploads still pending after this long are treated as crashed and reconciled at start.",
    )

    job_runner: Literal["local", "container", "kubernetes"] = Field(
        default="local", description="Where training jobs run."
    )
    job_workers: int = Field(default=1, ge=1, le=64, description="Training jobs run at once by this process.")
    job_timeout_seconds: int = Field(default=3600, ge=1, description="Default wall-clock limit of a job.")
    job_memory_bytes: int = Field(default=4 * 1024**3, description="Memory limit of a job.")
    job_max_output_bytes: int = Field(default=2 * 1024**3, description="Largest artifact a job may write.")
    job_python: str | None = Field(
        default=None, description="Interpreter for local python jobs (default: the controller's own)."
    )
    docker_host: str | None = Field(default=None, description="Docker-API endpoint for job_runner=container.")
    container_image: str | None = Field(
        default=None, description="Image for python-package jobs (container specs name their own)."
    )
    container_network: str = Field(default="none", description="Network mode of job containers.")
    container_ulimits: dict[str, int] = Field(
        default_factory=dict, description='Extra ulimits of job containers, JSON: {"nofile": 20000}.'
    )
    k8s_namespace: str = Field(default="fedge-jobs", description="Namespace of training Jobs.")
    k8s_image: str | None = Field(default=None, description="Image for python-package jobs on Kubernetes.")
    k8s_job_pvc: str | None = Field(
        default=None, description="RWX PVC holding job dirs (mounted at data_dir/jobs); default hostPath."
    )
    translation_timeout_seconds: int = Field(default=600, ge=1)
    telemetry_keep_per_device: int = Field(
        default=10_000,
        ge=0,
        description="Telemetry records kept per device (the newest by outbox sequence); 0 keeps all.",
    )
    device_cert_seconds: int = Field(
        default=365 * 86400,
        ge=10,
        le=3650 * 86400,
        description="Lifetime of device certificates (enrollment and renewal; agents renew before expiry, "
        "see docs/agent.md). Seconds, so that tests can use a short one.",
    )
    last_seen_write_seconds: float = Field(
        default=5.0,
        ge=0,
        le=10,
        description="A device's last_seen_at is written at most once per this many seconds (desired-state "
        "polls, telemetry; status reports always write it). At most 10: a device is online while last "
        "seen within 3 poll intervals (30 s).",
    )

    broker_backend: Literal["embedded", "mosquitto", "none"] = Field(
        default="embedded",
        description="MQTT for the fleet: amqtt inside the controller, an external Mosquitto, or none "
        "(agents then only poll over HTTP).",
    )
    broker_host: str = Field(
        default="127.0.0.1", description="Address of the broker (embedded: bind address)."
    )
    broker_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Broker port (embedded: 0 picks a free port; mosquitto: required).",
    )
    broker_url: str | None = Field(
        default=None,
        description="Broker URL given to devices at enrollment (default mqtt[s]://broker_host:broker_port).",
    )
    mosquitto_dir: Path | None = Field(
        default=None,
        description="Mosquitto's files (ca.pem, crl.pem, acl, mosquitto.pid, the controller's client "
        "certificate), rendered by `python -m controller.fleet.broker.mosquitto`. "
        "Default <data_dir>/fleet/mosquitto.",
    )
    replica_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$",
        description="This controller's stable name among replicas on one database and Mosquitto (e.g. a "
        "StatefulSet pod name; the same across its restarts): its MQTT client id is fedge-controller-<id> "
        "and it takes its share of device messages through a shared subscription. Unset: one controller.",
    )
    mqtt_session_expiry_seconds: int = Field(
        default=300,
        ge=0,
        description="With replica_id: how long Mosquitto keeps a replica's session (its subscription and "
        "its share of device messages) while it is away; a replica back within it misses nothing.",
    )

    fl_engine: Literal["flower", "none"] = Field(
        default="flower", description="Federated-learning engine ('none': FL jobs are refused)."
    )
    fl_superlink_address: str | None = Field(
        default=None,
        description="host:port of an external Flower SuperLink (Fleet + Control on one TLS port). "
        "Default: the controller supervises its own flower-superlink on 127.0.0.1.",
    )
    fl_superlink_ca: Path | None = Field(
        default=None, description="PEM CA that verifies an external SuperLink (default: the device CA)."
    )
    fl_superlink_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the supervised SuperLink on 127.0.0.1 (0: free)."
    )
    fl_fleet_host: str = Field(
        default="127.0.0.1", description="Bind address of the Fleet-only front that devices connect to."
    )
    fl_fleet_port: int = Field(
        default=0, ge=0, le=65535, description="TLS port of the Fleet-only front (0: a free port)."
    )
    fl_fleet_public_host: str | None = Field(
        default=None,
        description="Host devices use to reach the Fleet front (in its certificate's SAN; default "
        "fl_fleet_host, or 127.0.0.1 when that is 0.0.0.0).",
    )
    fl_report_url: str | None = Field(
        default=None,
        description="Base URL the ServerApp reports rounds to (a loopback controller route; default "
        "http://127.0.0.1:<port>).",
    )
    fl_workers: int = Field(
        default=1, ge=1, le=1, description="FL jobs run at once (one SuperLink federation: 1)."
    )
    fl_job_timeout_seconds: int = Field(default=6 * 3600, ge=10, description="Wall-clock limit of an FL job.")
    fl_node_wait_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a round waits for min_clients devices to be connected before the job fails.",
    )
    fl_superlink_start_seconds: float = Field(
        default=60.0, gt=0, description="How long the supervised SuperLink may take to become healthy."
    )

    admin_token: SecretStr | None = Field(
        default=None, description="Initial admin token on first start (automation). Else one is generated."
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set, GET /metrics needs Authorization: Bearer <metrics_token> (else it is open, "
        "like /healthz; docs/metrics.md).",
    )
    oidc_issuer: str | None = Field(default=None, description="Enable OIDC bearer JWTs from this issuer.")
    oidc_audience: str | None = None
    oidc_role_claim: str = Field(default="fedge_role", description="Claim (dotted path) holding the role.")
    oidc_default_role: Literal["developer", "operator", "admin", "none"] = Field(
        default="none", description="Role for valid tokens without the role claim ('none' refuses them)."
    )

    @model_validator(mode="after")
    def _check_backends(self) -> ControllerSettings:
        if self.storage_backend == "s3" and not (
            self.s3_endpoint and self.s3_access_key and self.s3_secret_key
        ):
            raise ValueError(
                "storage_backend=s3 needs FEDGE_S3_ENDPOINT, FEDGE_S3_ACCESS_KEY, FEDGE_S3_SECRET_KEY"
            )
        if self.broker_backend == "mosquitto" and not self.broker_port:
            raise ValueError("broker_backend=mosquitto needs FEDGE_BROKER_PORT")
        if self.replica_id and self.broker_backend == "embedded":
            raise ValueError(
                "FEDGE_REPLICA_ID: replicas share one broker; use broker_backend=mosquitto (or none)"
            )
        if self.chain_backend == "jsonrpc" and not self.chain_rpc_url:
            raise ValueError("chain_backend=jsonrpc needs FEDGE_CHAIN_RPC_URL")
        if self.fl_superlink_ca is not None and not self.fl_superlink_address:
            raise ValueError("FEDGE_FL_SUPERLINK_CA needs an external SuperLink (FEDGE_FL_SUPERLINK_ADDRESS)")
        return self

    @property
    def fl_report_base_url(self) -> str:
        """Where the ServerApp reaches the controller (loopback unless configured)."""
        if self.fl_report_url:
            return self.fl_report_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104 - compared, not bound
        return f"http://{host}:{self.port}"

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL actually used (SQLite under data_dir by default)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fedge.db').resolve()}"
