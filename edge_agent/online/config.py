"""The online learners' configuration file (``FEDGE_AGENT_ONLINE_CONFIG``: ``.toml`` or ``.json``).

TOML (JSON has the same shape, ``{"learners": [{...}]}``)::

    [[learners]]
    name = "meter-w4"                 # [a-z0-9][a-z0-9_-]*, the API path and the state directory
    backend = "river"                 # river | sklearn | torch
    model = "linear"                  # river: linear | logistic | hoeffding_tree | naive_bayes;
                                      # sklearn: sgd | mlp; torch: mlp | package.module:function
    task = "regression"               # or "classification" (then: classes = [...])
    transformer = "smart_meter"       # a registered transformer: features | smart_meter | ...
    transformer_options = { lags = 36, horizon = 96, interval = 900 }
    backend_options = { lr = 0.01 }   # passed to the backend (e.g. torch: batch_size, replay, lr)
    buffer = 10000                    # MQTT ingest queue; beyond it messages are dropped (burst)

    [learners.mqtt]                   # optional: the sensor broker and topics (not the fleet broker)
    broker = "mqtt://127.0.0.1:1883"
    topics = ["site/meters/W4"]       # MQTT filters, + and # allowed
    qos = 0                           # 1 with client_id: no reading lost while the agent restarts
    client_id = "agent-7-w4"          # optional: a persistent session on the sensor broker

    [learners.save]                   # save on improvement
    holdout_every = 10                # every 10th labelled sample goes to validation, not training
    validation_size = 200             # rolling window of held-out samples
    evaluate_every = 500              # learned samples between two evaluations
    min_validation = 20               # held-out samples needed before the first evaluation
    min_improvement = 0.01            # relative: save when loss < (1 - 0.01) x the saved version's loss
    keep_versions = 3

The sensor topics are the site's, not protocol: they live here. The fleet broker's ACL
(``fedge_protocol.topics.device_may``) lets a device read only its own desired/cmd/infer topics, so
sensor data comes from the site broker named in ``mqtt.broker``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.online.base import Label, Task

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class MqttFeed(BaseModel):
    """The broker and topics a learner reads."""

    model_config = ConfigDict(extra="forbid")

    broker: str = Field(pattern=r"^mqtts?://[^/]+$", description="mqtt://host:port or mqtts://host:port")
    topics: list[str] = Field(min_length=1)
    qos: Literal[0, 1] = 0
    username: str | None = None
    password_file: Path | None = Field(default=None, description="a file holding the password")
    ca_file: Path | None = Field(default=None, description="CA bundle for mqtts:// (default: system)")
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="set: a persistent session (the broker keeps QoS 1 readings while the agent is down)",
    )


class SavePolicy(BaseModel):
    """Save on improvement (see :mod:`edge_agent.online.learner`)."""

    model_config = ConfigDict(extra="forbid")

    holdout_every: int = Field(default=10, ge=2, description="every n-th labelled sample is held out")
    validation_size: int = Field(default=200, ge=1)
    evaluate_every: int = Field(default=500, ge=1)
    min_validation: int = Field(default=20, ge=1)
    min_improvement: float = Field(default=0.01, ge=0, lt=1, allow_inf_nan=False)
    keep_versions: int = Field(default=3, ge=1)


class LearnerConfig(BaseModel):
    """One online learner."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    backend: Literal["river", "sklearn", "torch"] = "river"
    model: str | None = None
    task: Task = "regression"
    classes: list[Label] | None = None
    transformer: str = "features"
    transformer_options: dict[str, Any] = Field(default_factory=dict)
    backend_options: dict[str, Any] = Field(default_factory=dict)
    buffer: int = Field(default=10_000, ge=1, description="MQTT ingest queue length")
    max_message_bytes: int = Field(default=64 * 1024, ge=64)
    max_abs: float = Field(
        default=1e12,
        gt=0,
        allow_inf_nan=False,
        description="features and labels beyond +-max_abs are refused",
    )
    checkpoint_every: int = Field(default=1000, ge=1, description="accepted messages between checkpoints")
    checkpoint_interval: float = Field(default=30.0, gt=0, description="seconds between checkpoints")
    seed: int = 0
    mqtt: MqttFeed | None = None
    save: SavePolicy = Field(default_factory=SavePolicy)

    @model_validator(mode="after")
    def _classes(self) -> LearnerConfig:
        if self.task == "classification" and not self.classes:
            raise ValueError("a classification learner needs its classes")
        if self.classes is not None and len(set(map(repr, self.classes))) != len(self.classes):
            raise ValueError("classes must be distinct")
        return self


class OnlineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learners: list[LearnerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> OnlineConfig:
        names = [learner.name for learner in self.learners]
        if len(set(names)) != len(names):
            raise ValueError(f"learner names must be unique: {names}")
        return self


def load_config(path: Path) -> OnlineConfig:
    """Read and validate a ``.toml`` or ``.json`` learner file (ValueError with the reason)."""
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ValueError(f"{path}: the learner file must be .toml or .json")
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return OnlineConfig.model_validate(data)
