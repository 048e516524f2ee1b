"""Agent settings (environment prefix ``FEDGE_AGENT_``)."""

from __future__ import annotations

from pathlib import Path

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
