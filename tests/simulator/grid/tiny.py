"""A tiny, barely trained PPO policy (a few seconds): enough to check export, registration and grid runs."""

from __future__ import annotations

from pathlib import Path

from simulator.grid.model import GridModel
from simulator.grid.policy_info import ONNX_FILE
from simulator.grid.rl import TrainConfig, TrainedPolicy, get_backend

TINY_ACTIONS_PER_DAY = 8


def tiny_policy(model: GridModel, folder: Path) -> TrainedPolicy:
    """Train PPO for 32 steps (flat actions, 8 shifts a day), save it and export policy.onnx."""
    config = TrainConfig(
        algorithm="ppo",
        total_timesteps=32,
        actions_per_day=TINY_ACTIONS_PER_DAY,
        n_envs=1,
        actions="flat",
        hyperparameters={"n_steps": 32, "batch_size": 32, "n_epochs": 1, "net_arch": [16]},
    )
    policy = get_backend("sb3").train(model, config)
    policy.save(folder)
    policy.export_onnx(folder / ONNX_FILE)
    return policy
