"""RL optimizer behind a small backend interface.

The seed (IoT-NGIN D3.4) trained its optimizer with Tensorforce; no Tensorforce release installs on
Python 3.11 (every 0.6.x pins TensorFlow 2.3-2.6 and numpy 1.19), so fedge uses Stable-Baselines3 (PPO
and DQN) behind :class:`RLBackend`. Another library plugs in by implementing ``train``/``load`` and
registering itself in :data:`BACKENDS`.

A trained policy is stored as a directory: ``policy.json`` (backend, algorithm and the environment settings
it was trained with), the backend's own file (``model.zip`` for SB3) and, after :meth:`export_onnx`,
``policy.onnx`` mapping a float32 observation batch ``obs`` to an int64 ``action`` batch (argmax of the
policy network: the same action SB3 takes with ``deterministic=True``).
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from simulator.grid.env import DEFAULT_ACTIONS_PER_DAY, ActionKind, LoadShiftEnv
from simulator.grid.errors import MissingExtraError, PolicyError
from simulator.grid.model import GridModel
from simulator.grid.policies import Policy
from simulator.grid.policy_info import POLICY_FILE, PolicyInfo


@dataclass(frozen=True)
class TrainConfig:
    """What to train and on which environment settings."""

    algorithm: str = "ppo"
    total_timesteps: int = 200_000
    seed: int = 0
    actions_per_day: int = DEFAULT_ACTIONS_PER_DAY
    reward_scale: float = 100.0
    """Rewards are ``reward_scale`` times the score gain (100: percentage points)."""
    n_envs: int = 4
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    actions: str = "auto"
    """``multi`` (MultiDiscrete), ``flat`` (Discrete) or ``auto``: flat for DQN, multi otherwise."""
    demonstration_episodes: int = 0
    """PPO only: behaviour-clone this many episodes of :class:`SurplusBoundaryRule` before PPO."""
    bc_epochs: int = 30
    validation_days: int = 12
    """With demonstrations: training days held back to keep the better of the cloned / fine-tuned policy."""
    threads: int = 1
    """torch threads for the network updates (the environment steps in the same process)."""
    network: str = "mlp"
    """``mlp`` (SB3's MlpPolicy) or ``shared`` (PPO, flat actions: one small network scores every candidate
    shift, :mod:`simulator.grid.candidates`)."""

    @property
    def action_kind(self) -> ActionKind:
        if self.actions == "flat" or (self.actions == "auto" and self.algorithm == "dqn"):
            return "flat"
        if self.actions in ("multi", "auto"):
            return "multi"
        raise PolicyError(f"actions must be 'auto', 'multi' or 'flat', not {self.actions!r}")


def make_env(
    model: GridModel, info: PolicyInfo | TrainConfig, days: str | tuple[int, ...] = "train", **overrides: Any
) -> LoadShiftEnv:
    """An environment with the settings a policy was (or will be) trained with."""
    kwargs: dict[str, Any] = {
        "days": days,
        "actions_per_day": info.actions_per_day,
        "action_kind": info.action_kind,
        "reward_scale": info.reward_scale,
    }
    if isinstance(info, PolicyInfo):
        kwargs["bidirectional"] = info.bidirectional
    kwargs.update(overrides)
    return LoadShiftEnv(model, **kwargs)


def check_compatible(info: PolicyInfo, env: LoadShiftEnv) -> None:
    names = [s.name for s in env.model.controllable]
    if info.controllable != names:
        raise PolicyError(f"policy controls {info.controllable}, this grid's controllable loads are {names}")
    if list(env.codec.nvec) != info.nvec or env.observation_space.shape != (info.obs_dim,):
        raise PolicyError("policy and environment disagree on observation or action shape")


class TrainedPolicy(Policy):
    """A learned policy: batch prediction, storage and ONNX export."""

    def __init__(self, info: PolicyInfo) -> None:
        self.info = info
        self.name = f"{info.backend}-{info.algorithm}"

    @abstractmethod
    def predict(self, obs: NDArray[np.float32]) -> NDArray[np.int64]:
        """Deterministic actions for an observation batch: (n, len(nvec)) for multi, (n,) for flat."""

    def act(self, obs: NDArray[np.float32], env: LoadShiftEnv) -> Any:
        action = self.predict(np.asarray(obs, dtype=np.float32)[np.newaxis, :])[0]
        return int(action) if self.info.action_kind == "flat" else action

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write ``policy.json`` and the backend's model file into ``directory``."""

    @abstractmethod
    def export_onnx(self, path: Path) -> Path:
        """Write an ONNX graph obs -> action (int64) and return its path."""


class RLBackend(ABC):
    """An RL library: trains policies on :class:`LoadShiftEnv` and loads stored ones."""

    name: ClassVar[str]
    algorithms: ClassVar[tuple[str, ...]]

    @abstractmethod
    def train(
        self, model: GridModel, config: TrainConfig, *, progress: Callable[[int], None] | None = None
    ) -> TrainedPolicy:
        """Train on ``model.train_days()``; ``progress(n)`` is called with the number of new steps."""

    @abstractmethod
    def load(self, directory: Path, info: PolicyInfo) -> TrainedPolicy:
        """Load a policy this backend saved."""


# Stable-Baselines3 ------------------------------------------------------------------------------------

_PPO_DEFAULTS: dict[str, Any] = {
    "learning_rate": 3e-4,
    "n_steps": 1024,
    "batch_size": 256,
    "n_epochs": 10,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "ent_coef": 0.01,
    "clip_range": 0.2,
    "net_arch": [256, 256],
}
_DQN_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-4,
    "buffer_size": 100_000,
    "learning_starts": 2_000,
    "batch_size": 128,
    "gamma": 0.99,
    "train_freq": 4,
    "target_update_interval": 2_000,
    "exploration_fraction": 0.3,
    "exploration_final_eps": 0.05,
    "net_arch": [256, 256],
}


def _sb3() -> Any:
    try:
        import stable_baselines3
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingExtraError("stable-baselines3") from exc
    return stable_baselines3


class SB3Policy(TrainedPolicy):
    """A Stable-Baselines3 PPO (MultiDiscrete actions) or DQN (flat Discrete actions) policy."""

    def __init__(self, info: PolicyInfo, sb3_model: Any) -> None:
        super().__init__(info)
        self.sb3_model = sb3_model

    def predict(self, obs: NDArray[np.float32]) -> NDArray[np.int64]:
        action, _ = self.sb3_model.predict(np.asarray(obs, dtype=np.float32), deterministic=True)
        return np.asarray(action, dtype=np.int64)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.sb3_model.save(str(directory / "model.zip"))
        (directory / POLICY_FILE).write_text(self.info.to_json(), encoding="utf-8")

    def _argmax_module(self) -> Any:
        import torch

        policy = self.sb3_model.policy
        nvec = list(self.info.nvec)
        flat = self.info.action_kind == "flat"
        q_learning = self.info.algorithm == "dqn"

        class ArgmaxActor(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.policy = policy

            def forward(self, obs: torch.Tensor) -> torch.Tensor:
                if q_learning:
                    q_values: torch.Tensor = self.policy.q_net(obs)
                    return q_values.argmax(dim=1)
                features = self.policy.extract_features(obs, self.policy.pi_features_extractor)
                logits = self.policy.action_net(self.policy.mlp_extractor.forward_actor(features))
                if flat:
                    flat_action: torch.Tensor = logits.argmax(dim=1)
                    return flat_action
                parts = torch.split(logits, nvec, dim=1)
                return torch.stack([p.argmax(dim=1) for p in parts], dim=1)

        return ArgmaxActor().eval()

    def export_onnx(self, path: Path) -> Path:
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        module = self._argmax_module()
        dummy = torch.zeros((2, self.info.obs_dim), dtype=torch.float32)
        try:
            import onnx  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError("onnx") from exc
        with torch.no_grad():
            torch.onnx.export(
                module,
                (dummy,),
                str(path),
                input_names=["obs"],
                output_names=["action"],
                dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
                dynamo=False,
            )
        from simulator.grid.onnx_policy import embed_policy_info

        embed_policy_info(path, self.info)  # one file, one SHA-256: the network and its settings
        return path


class SB3Backend(RLBackend):
    """Stable-Baselines3: ``ppo`` (MultiDiscrete [7, 24, 3, 2]) and ``dqn`` (Discrete(1008))."""

    name = "sb3"
    algorithms = ("ppo", "dqn")

    def _classes(self) -> dict[str, Any]:
        sb3 = _sb3()
        return {"ppo": sb3.PPO, "dqn": sb3.DQN}

    def train(
        self, model: GridModel, config: TrainConfig, *, progress: Callable[[int], None] | None = None
    ) -> TrainedPolicy:
        if config.algorithm not in self.algorithms:
            raise PolicyError(
                f"sb3 backend has no algorithm {config.algorithm!r}; use one of {self.algorithms}"
            )
        import torch
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.env_util import make_vec_env

        torch.set_num_threads(max(1, config.threads))
        defaults = _PPO_DEFAULTS if config.algorithm == "ppo" else _DQN_DEFAULTS
        params = {**defaults, **config.hyperparameters}
        net_arch = params.pop("net_arch")
        hidden = int(params.pop("hidden", 64))
        policy_class: Any = "MlpPolicy"
        policy_kwargs: dict[str, Any] = {"net_arch": net_arch}
        if config.network == "shared":
            if config.algorithm != "ppo" or config.action_kind != "flat":
                raise PolicyError("the shared candidate network needs --algo ppo --actions flat")
            from simulator.grid.candidates import CandidatePolicy, keep_large_blocks

            keep_large_blocks()
            policy_class, policy_kwargs = CandidatePolicy, {"hidden": hidden}
        elif config.network != "mlp":
            raise PolicyError(f"network must be 'mlp' or 'shared', not {config.network!r}")
        vec_env = make_vec_env(lambda: make_env(model, config), n_envs=config.n_envs, seed=config.seed)
        algo = self._classes()[config.algorithm](
            policy_class,
            vec_env,
            seed=config.seed,
            device="cpu",
            verbose=0,
            policy_kwargs=policy_kwargs,
            **params,
        )

        class Progress(BaseCallback):
            def __init__(self) -> None:
                super().__init__()
                self._last = 0

            def _on_step(self) -> bool:
                if progress is not None:
                    progress(self.num_timesteps - self._last)
                self._last = self.num_timesteps
                return True

        start = time.perf_counter()
        selected = "rl"
        validation: dict[str, float] = {}
        train_days = model.train_days()
        if config.demonstration_episodes > 0:
            if config.algorithm != "ppo":
                raise PolicyError("demonstrations are supported for PPO only")
            rng = np.random.default_rng(config.seed)
            held = tuple(int(d) for d in rng.choice(train_days, size=config.validation_days, replace=False))
            learn_days = tuple(d for d in train_days if d not in held)
            vec_env = make_vec_env(
                lambda: make_env(model, config, days=learn_days), n_envs=config.n_envs, seed=config.seed
            )
            algo.set_env(vec_env)
            _behaviour_clone(algo, model, config, learn_days, rng)
            cloned = copy.deepcopy(algo.policy.state_dict())
            validation["cloned"] = _mean_score(algo, model, config, held)
        algo.learn(total_timesteps=config.total_timesteps, callback=Progress())
        if config.demonstration_episodes > 0:
            validation["cloned+ppo"] = _mean_score(algo, model, config, held)
            selected = max(validation, key=lambda k: validation[k])
            if selected == "cloned":
                algo.policy.load_state_dict(cloned)
        probe = make_env(model, config)
        info = PolicyInfo(
            backend=self.name,
            algorithm=config.algorithm,
            grid=model.spec.name,
            controllable=[s.name for s in model.controllable],
            actions_per_day=config.actions_per_day,
            action_kind=config.action_kind,
            bidirectional=probe.codec.bidirectional,
            reward_scale=config.reward_scale,
            obs_dim=int(probe.observation_space.shape[0]),  # type: ignore[index]
            nvec=list(probe.codec.nvec),
            total_timesteps=config.total_timesteps,
            seed=config.seed,
            train_seconds=time.perf_counter() - start,
            demonstration_episodes=config.demonstration_episodes,
            selected=selected,
            validation=validation,
            network=config.network,
        )
        return SB3Policy(info, algo)

    def load(self, directory: Path, info: PolicyInfo) -> TrainedPolicy:
        if info.algorithm not in self.algorithms:
            raise PolicyError(f"sb3 backend has no algorithm {info.algorithm!r}")
        path = directory / "model.zip"
        if not path.is_file():
            raise PolicyError(f"{path} is missing")
        algo = self._classes()[info.algorithm].load(str(path), device="cpu")
        return SB3Policy(info, algo)


def _behaviour_clone(
    algo: Any, model: GridModel, config: TrainConfig, days: tuple[int, ...], rng: np.random.Generator
) -> None:
    """Fit the actor to SurplusBoundaryRule's actions and the critic to its discounted returns."""
    import torch

    from simulator.grid.policies import SurplusBoundaryRule

    env = make_env(model, config, days=days)
    rule = SurplusBoundaryRule()
    gamma = float(algo.gamma)
    observations: list[NDArray[np.float32]] = []
    actions: list[Any] = []
    returns: list[float] = []
    for _ in range(config.demonstration_episodes):
        obs, _ = env.reset(options={"day": int(rng.choice(days))})
        rewards: list[float] = []
        done = False
        while not done:
            action = rule.act(obs, env)
            observations.append(obs)
            actions.append(action)
            obs, reward, done, _, _ = env.step(action)
            rewards.append(reward)
        running = 0.0
        episode_returns = []
        for reward in reversed(rewards):
            running = reward + gamma * running
            episode_returns.append(running)
        returns.extend(reversed(episode_returns))
    policy = algo.policy
    obs_t = torch.as_tensor(np.asarray(observations), dtype=torch.float32)
    act_t = torch.as_tensor(np.asarray(actions), dtype=torch.long)
    ret_t = torch.as_tensor(np.asarray(returns), dtype=torch.float32)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(config.seed)
    policy.set_training_mode(True)
    for _ in range(config.bc_epochs):
        order = torch.randperm(len(obs_t), generator=generator)
        for begin in range(0, len(order), 256):
            idx = order[begin : begin + 256]
            values, log_prob, _ = policy.evaluate_actions(obs_t[idx], act_t[idx])
            loss = -log_prob.mean() + 0.5 * torch.nn.functional.mse_loss(values.flatten(), ret_t[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    policy.set_training_mode(False)


def _mean_score(algo: Any, model: GridModel, config: TrainConfig, days: tuple[int, ...]) -> float:
    """Mean final (SCR+SSR)/2 of the deterministic policy on ``days``."""
    env = make_env(model, config, days=days)
    scores = []
    for day in days:
        obs, info = env.reset(options={"day": day})
        done = False
        while not done:
            action, _ = algo.predict(obs, deterministic=True)
            obs, _, done, _, info = env.step(action)
        scores.append(float(info["score"]))
    return float(np.mean(scores))


BACKENDS: dict[str, Callable[[], RLBackend]] = {"sb3": SB3Backend}


def get_backend(name: str) -> RLBackend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise PolicyError(f"unknown RL backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None


def load_policy(directory: Path | str) -> TrainedPolicy:
    """Load a stored policy directory with the backend named in its ``policy.json``."""
    directory = Path(directory)
    info = PolicyInfo.read(directory)
    return get_backend(info.backend).load(directory, info)
