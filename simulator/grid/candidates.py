"""A policy network that scores every candidate shift with one shared small network.

The flat action space holds one action per (controllable load, start hour, shift level, direction):
1008 candidates for 7 loads. A plain MLP from the 601 observation features to 1008 logits has to learn
the same relation (how much of *this* load's demand in *this* hour could fill *that* neighbour's export)
separately for every output; with a few hundred thousand environment steps it never does (docs/grid.md,
section 5). Here the observation is rearranged into one short feature vector per candidate (the load's
demand in the start and target hour, PV and grid exchange of both hours, the demand the shift moves, how
much of it an exporting neighbour could absorb, ...) and a single MLP, shared by all candidates, maps each
vector to that candidate's logit. The critic pools the same per-candidate hidden states.

All features are derived from the observation alone (``LoadShiftEnv.observation``), so the network is a
pure function obs -> logits and exports to ONNX like any other SB3 actor.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from simulator.grid.actions import HOURS, SHIFT_FRACTIONS
from simulator.grid.errors import PolicyError

N_CANDIDATE_FEATURES = 14
_GLOBAL_FEATURES = 4


def keep_large_blocks(limit: int = 512 << 20) -> bool:
    """Let glibc reuse freed blocks up to ``limit`` bytes instead of unmapping them.

    A minibatch of 256 observations makes activations of 256 x 1008 x hidden floats (66 MB at 64), above
    glibc's largest mmap threshold (32 MB): every such tensor is mapped, zeroed by the kernel and unmapped
    again, and half of the training time went to the kernel. Raising the thresholds halves an update
    (measured: 1.20 s -> 0.57 s per update of 256 at hidden 64, one thread). No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))
    except (OSError, AttributeError):
        return False


def layout(obs_dim: int) -> int:
    """Number of controllable loads implied by the observation size (see ``LoadShiftEnv``)."""
    n_loads, rest = divmod(obs_dim - 4 * HOURS - 1, 3 * HOURS)
    if rest or n_loads < 1:
        raise PolicyError(f"observation of size {obs_dim} does not have the load-shift layout")
    return n_loads


def _neighbour(x: torch.Tensor, direction: int) -> torch.Tensor:
    """Value of the neighbouring hour along the last axis (0 where it would leave the day)."""
    pad = torch.zeros_like(x[..., :1])
    if direction == 0:  # later: x[h + 1]
        return torch.cat([x[..., 1:], pad], dim=-1)
    return torch.cat([pad, x[..., :-1]], dim=-1)


class CandidateNet(nn.Module):
    """obs (B, obs_dim) -> candidate logits (B, n_loads*24*levels*directions) and a critic latent."""

    def __init__(self, obs_dim: int, bidirectional: bool, hidden: int = 64) -> None:
        super().__init__()
        self.n_loads = layout(obs_dim)
        self.directions = 2 if bidirectional else 1
        self.hidden = hidden
        self.n_candidates = self.n_loads * HOURS * len(SHIFT_FRACTIONS) * self.directions
        self.encoder = nn.Sequential(
            nn.Linear(N_CANDIDATE_FEATURES, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.score = nn.Linear(hidden, 1)
        self.critic = nn.Sequential(nn.Linear(2 * hidden + _GLOBAL_FEATURES, hidden), nn.ReLU())

    def candidate_features(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, n_loads, 24, levels, directions, N_CANDIDATE_FEATURES), in the flat action order."""
        n, h = self.n_loads, HOURS
        batch = obs.shape[0]
        demand = obs[:, : n * h].reshape(batch, n, h)
        offset = n * h
        pv, exchange, to_later, to_earlier = (obs[:, offset + i * h : offset + (i + 1) * h] for i in range(4))
        progress = obs[:, -1:]
        per_direction = []
        for direction, overlap in ((0, to_later), (1, to_earlier))[: self.directions]:
            valid = _neighbour(torch.ones_like(pv), direction)
            base = [
                demand,
                _neighbour(demand, direction),
                pv.unsqueeze(1).expand(-1, n, -1),
                _neighbour(pv, direction).unsqueeze(1).expand(-1, n, -1),
                exchange.unsqueeze(1).expand(-1, n, -1),
                _neighbour(exchange, direction).unsqueeze(1).expand(-1, n, -1),
                overlap.unsqueeze(1).expand(-1, n, -1),
                valid.unsqueeze(1).expand(-1, n, -1),
                progress.unsqueeze(2).expand(-1, n, h),
            ]
            base_t = torch.stack(base, dim=-1)  # (B, n, 24, 9)
            levels = []
            for fraction in SHIFT_FRACTIONS:
                moved = fraction * demand * valid.unsqueeze(1)
                absorbed = torch.minimum(moved, overlap.unsqueeze(1).expand(-1, n, -1))
                extra = torch.stack(
                    [moved, absorbed, moved - absorbed, torch.full_like(moved, fraction), 10.0 * absorbed],
                    dim=-1,
                )
                levels.append(torch.cat([base_t, extra], dim=-1))
            per_direction.append(torch.stack(levels, dim=3))  # (B, n, 24, levels, F)
        return torch.stack(per_direction, dim=4)  # (B, n, 24, levels, directions, F)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = obs.shape[0]
        features = self.candidate_features(obs).reshape(batch, self.n_candidates, N_CANDIDATE_FEATURES)
        hidden = self.encoder(features)
        logits = self.score(hidden).squeeze(-1)
        offset = self.n_loads * HOURS
        exchange = obs[:, offset + HOURS : offset + 2 * HOURS]
        overlaps = obs[:, offset + 2 * HOURS : offset + 4 * HOURS]
        summary = torch.cat(
            [
                obs[:, -1:],
                overlaps.sum(dim=1, keepdim=True),
                torch.relu(exchange).sum(dim=1, keepdim=True),
                torch.relu(-exchange).sum(dim=1, keepdim=True),
            ],
            dim=1,
        )
        pooled = torch.cat([hidden.mean(dim=1), hidden.amax(dim=1), summary], dim=1)
        return logits, self.critic(pooled)


class CandidateExtractor(nn.Module):
    """SB3 ``mlp_extractor`` wrapper: the actor latent is the logits, the critic latent the pooled state."""

    def __init__(self, obs_dim: int, bidirectional: bool, hidden: int) -> None:
        super().__init__()
        self.net = CandidateNet(obs_dim, bidirectional, hidden)
        self.latent_dim_pi = self.net.n_candidates
        self.latent_dim_vf = hidden

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result: tuple[torch.Tensor, torch.Tensor] = self.net(features)
        return result

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(features)[0]
        return logits

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        latent: torch.Tensor = self.net(features)[1]
        return latent


class CandidatePolicy(ActorCriticPolicy):
    """PPO policy over the flat Discrete action with :class:`CandidateNet` as actor and critic body."""

    def __init__(self, *args: Any, hidden: int = 64, **kwargs: Any) -> None:
        self.candidate_hidden = hidden
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        obs_space = self.observation_space
        action_space = self.action_space
        if not isinstance(action_space, spaces.Discrete) or obs_space.shape is None:
            raise PolicyError("the shared candidate network needs the flat Discrete action (--actions flat)")
        obs_dim = int(np.prod(obs_space.shape))
        n_loads = layout(obs_dim)
        per_direction = n_loads * HOURS * len(SHIFT_FRACTIONS)
        if int(action_space.n) not in (per_direction, 2 * per_direction):
            raise PolicyError(f"action space of {action_space.n} does not match {n_loads} loads")
        bidirectional = int(action_space.n) == 2 * per_direction
        self.mlp_extractor = CandidateExtractor(obs_dim, bidirectional, self.candidate_hidden)  # type: ignore[assignment]

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        # The extractor already produces one logit per candidate.
        self.action_net = nn.Identity()
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data: dict[str, Any] = super()._get_constructor_parameters()
        data["hidden"] = self.candidate_hidden
        return data
