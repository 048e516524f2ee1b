"""``policy.json``: what a trained grid policy was trained with (read by the trainer, the ONNX export and
the device), in a module of its own so that the RL trainer and the ONNX policy both depend on it and not
on each other."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from simulator.grid.env import ActionKind
from simulator.grid.errors import PolicyError

POLICY_FILE = "policy.json"
ONNX_FILE = "policy.onnx"


@dataclass(frozen=True)
class PolicyInfo:
    """Contents of ``policy.json``."""

    backend: str
    algorithm: str
    grid: str
    controllable: list[str]
    actions_per_day: int
    action_kind: ActionKind
    bidirectional: bool
    reward_scale: float
    obs_dim: int
    nvec: list[int]
    total_timesteps: int
    seed: int
    train_seconds: float = 0.0
    demonstration_episodes: int = 0
    selected: str = "rl"
    """``rl``; with demonstrations ``cloned`` or ``cloned+ppo`` (better on the validation days)."""
    validation: dict[str, float] = field(default_factory=dict)
    network: str = "mlp"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, directory: Path) -> PolicyInfo:
        path = directory / POLICY_FILE
        if not path.is_file():
            raise PolicyError(f"{directory} is not a policy directory (no {POLICY_FILE})")
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"{path} is not a valid policy description: {exc}") from exc
