"""RL backends (short trainings only), policy storage and ONNX export parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simulator.grid.env import LoadShiftEnv
from simulator.grid.errors import PolicyError
from simulator.grid.model import GridModel
from simulator.grid.onnx_policy import OnnxPolicy
from simulator.grid.policy_info import ONNX_FILE, POLICY_FILE, PolicyInfo
from simulator.grid.rl import (
    SB3Backend,
    TrainConfig,
    TrainedPolicy,
    check_compatible,
    get_backend,
    load_policy,
    make_env,
)

TINY = {
    "ppo": {"n_steps": 64, "batch_size": 64, "n_epochs": 1, "net_arch": [32, 32]},
    "dqn": {"learning_starts": 32, "buffer_size": 1000, "batch_size": 32, "net_arch": [32, 32]},
}


@pytest.fixture(scope="module", params=["ppo", "dqn", "ppo-flat", "ppo-flat-shared"])
def trained(
    request: pytest.FixtureRequest, model: GridModel, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainedPolicy, Path]:
    algorithm, *rest = str(request.param).split("-")
    network = "shared" if "shared" in rest else "mlp"
    config = TrainConfig(
        algorithm=algorithm,
        total_timesteps=128,
        actions_per_day=16,
        n_envs=2,
        hyperparameters={**TINY[algorithm], **({"hidden": 16} if network == "shared" else {})},
        actions="flat" if "flat" in rest else "auto",
        network=network,
    )
    steps: list[int] = []
    policy = get_backend("sb3").train(model, config, progress=steps.append)
    assert sum(steps) >= config.total_timesteps
    folder = tmp_path_factory.mktemp(f"policy-{request.param}")
    policy.save(folder)
    return policy, folder


def _observations(model: GridModel, info: PolicyInfo) -> np.ndarray:
    env = make_env(model, info, days="test")
    rows = []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        rows.append(obs)
        for _ in range(4):
            obs, *_ = env.step(env.action_space.sample())
            rows.append(obs)
    noise = np.random.default_rng(0).normal(size=(32, info.obs_dim)).astype(np.float32)
    return np.vstack([np.asarray(rows, dtype=np.float32), noise])


def test_backend_registry_knows_sb3_and_refuses_unknown_names() -> None:
    assert isinstance(get_backend("sb3"), SB3Backend)
    assert get_backend("sb3").algorithms == ("ppo", "dqn")
    with pytest.raises(PolicyError, match="unknown RL backend"):
        get_backend("tensorforce")


def test_unknown_algorithm_is_refused(model: GridModel) -> None:
    with pytest.raises(PolicyError, match="a2c"):
        get_backend("sb3").train(model, TrainConfig(algorithm="a2c", total_timesteps=8))


def test_policy_matches_its_action_space(trained: tuple[TrainedPolicy, Path], model: GridModel) -> None:
    policy, _ = trained
    env = make_env(model, policy.info, days="test")
    obs, _ = env.reset(seed=0)

    action = policy.act(obs, env)

    assert env.action_space.contains(action)
    assert policy.info.nvec == [7, 24, 3, 2]
    if policy.info.algorithm == "dqn" or env.action_kind == "flat":
        assert policy.info.action_kind == "flat" and isinstance(action, int)
    else:
        assert policy.info.action_kind == "multi" and np.shape(action) == (4,)


def test_saved_policy_loads_and_acts_identically(
    trained: tuple[TrainedPolicy, Path], model: GridModel
) -> None:
    policy, folder = trained
    obs = _observations(model, policy.info)

    loaded = load_policy(folder)

    assert loaded.info == policy.info
    assert np.array_equal(loaded.predict(obs), policy.predict(obs))


def test_onnx_export_gives_the_same_actions_as_the_sb3_policy(
    trained: tuple[TrainedPolicy, Path], model: GridModel
) -> None:
    policy, folder = trained
    obs = _observations(model, policy.info)

    path = policy.export_onnx(folder / ONNX_FILE)
    exported = OnnxPolicy(path, policy.info)

    expected = policy.predict(obs)
    got = exported.predict(obs)
    assert got.dtype == np.int64 and got.shape == expected.shape
    assert np.array_equal(got, expected)
    env = make_env(model, policy.info, days="test")
    first, _ = env.reset(seed=1)
    assert env.action_space.contains(exported.act(first, env))


def test_policy_folder_errors_are_clear(
    tmp_path: Path, trained: tuple[TrainedPolicy, Path], model: GridModel
) -> None:
    with pytest.raises(PolicyError, match="not a policy directory"):
        load_policy(tmp_path)
    (tmp_path / POLICY_FILE).write_text('{"backend": "sb3"}')
    with pytest.raises(PolicyError, match="not a valid policy"):
        load_policy(tmp_path)
    policy, folder = trained
    info = json.loads((folder / POLICY_FILE).read_text())
    info["controllable"] = list(reversed(info["controllable"]))
    with pytest.raises(PolicyError, match="controls"):
        check_compatible(PolicyInfo(**info), make_env(model, policy.info, days="test"))


def test_env_for_a_policy_uses_its_training_settings(
    trained: tuple[TrainedPolicy, Path], model: GridModel
) -> None:
    policy, _ = trained
    env = make_env(model, policy.info, days="test")

    assert isinstance(env, LoadShiftEnv)
    assert env.actions_per_day == policy.info.actions_per_day == 16
    assert env.reward_scale == policy.info.reward_scale
    check_compatible(policy.info, env)


def test_ppo_can_start_from_cloned_demonstrations(model: GridModel) -> None:
    config = TrainConfig(
        algorithm="ppo",
        total_timesteps=64,
        actions_per_day=12,
        n_envs=1,
        demonstration_episodes=2,
        bc_epochs=2,
        validation_days=2,
        hyperparameters=TINY["ppo"],
    )

    policy = get_backend("sb3").train(model, config)

    assert set(policy.info.validation) == {"cloned", "cloned+ppo"}
    assert policy.info.selected == max(policy.info.validation, key=policy.info.validation.__getitem__)
    assert policy.info.demonstration_episodes == 2


def test_demonstrations_are_refused_for_dqn(model: GridModel) -> None:
    config = TrainConfig(algorithm="dqn", total_timesteps=8, actions_per_day=4, demonstration_episodes=1)

    with pytest.raises(PolicyError, match="PPO only"):
        get_backend("sb3").train(model, config)
