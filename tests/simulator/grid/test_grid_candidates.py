"""The shared candidate network: its per-candidate features follow the env's state and the flat action order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simulator.grid.actions import SHIFT_FRACTIONS, ShiftAction
from simulator.grid.candidates import N_CANDIDATE_FEATURES, CandidateNet, layout
from simulator.grid.env import LoadShiftEnv
from simulator.grid.errors import PolicyError
from simulator.grid.model import GridModel, hourly

ABSORBED = 10  # index of min(moved, what the neighbour's export can absorb) in the feature vector


def _states(model: GridModel, day: int, bidirectional: bool) -> tuple[LoadShiftEnv, list[np.ndarray]]:
    env = LoadShiftEnv(model, days=(day,), action_kind="flat", bidirectional=bidirectional)
    obs, _ = env.reset(seed=0)
    states = [obs]
    rng = np.random.default_rng(1)
    for _ in range(6):
        obs, *_ = env.step(int(rng.integers(env.action_space.n)))  # type: ignore[attr-defined]
        states.append(obs)
    return env, states


def test_layout_reads_the_number_of_loads_and_refuses_other_sizes() -> None:
    assert layout(601) == 7
    assert layout(3 * 24 * 2 + 4 * 24 + 1) == 2
    with pytest.raises(PolicyError, match="layout"):
        layout(600)


def test_absorbed_feature_equals_the_envs_own_movable_block(model: GridModel, summer_day: int) -> None:
    _, states = _states(model, summer_day, bidirectional=True)
    net = CandidateNet(601, bidirectional=True)
    n = len(model.controllable)
    obs = torch.as_tensor(np.asarray(states))

    features = net.candidate_features(obs).numpy()

    assert features.shape == (len(states), n, 24, len(SHIFT_FRACTIONS), 2, N_CANDIDATE_FEATURES)
    offset = 24 * n + 4 * 24  # after demand, pv, exchange, to_later, to_earlier
    movable_later = np.asarray(states)[:, offset : offset + 24 * n].reshape(-1, n, 24)
    movable_earlier = np.asarray(states)[:, offset + 24 * n : offset + 48 * n].reshape(-1, n, 24)
    np.testing.assert_allclose(features[:, :, :, -1, 0, ABSORBED], movable_later, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(features[:, :, :, -1, 1, ABSORBED], movable_earlier, rtol=1e-6, atol=1e-7)
    # Shifts that would leave the day move nothing.
    assert np.all(features[:, :, 23, :, 0, 9] == 0) and np.all(features[:, :, 0, :, 1, 9] == 0)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_logits_are_in_the_flat_action_order(model: GridModel, summer_day: int, bidirectional: bool) -> None:
    """A net wired to output the 'absorbed' feature picks the shift that fills the most export."""
    env, states = _states(model, summer_day, bidirectional)
    net = CandidateNet(int(env.observation_space.shape[0]), bidirectional=bidirectional, hidden=4)  # type: ignore[index]
    assert net.n_candidates == env.action_space.n  # type: ignore[attr-defined]
    with torch.no_grad():
        for module in (net.encoder[0], net.encoder[2], net.score):
            module.weight.zero_()
            module.bias.zero_()
        net.encoder[0].weight[0, ABSORBED] = 1.0
        net.encoder[2].weight[0, 0] = 1.0
        net.score.weight[0, 0] = 1.0
        logits, _ = net(torch.as_tensor(np.asarray(states)))
    chosen = logits.argmax(dim=1).numpy()

    env.reset(options={"day": summer_day})
    sim = env.simulation
    exchange = -hourly(sim.p_ext)
    surplus, deficit = np.maximum(exchange, 0), np.maximum(-exchange, 0)
    demand = hourly(sim.p_load[:, list(model.controllable_indices)]) / float(sim.load_total().mean())
    surplus, deficit = surplus / float(sim.load_total().mean()), deficit / float(sim.load_total().mean())

    def value(shift: ShiftAction) -> float:
        target = shift.target_hour
        if target is None:
            return 0.0
        moved = shift.fraction * demand[shift.hour, shift.load]
        return float(min(moved, deficit[shift.hour], surplus[target]))

    directions = (0, 1) if bidirectional else (0,)
    values = [
        value(ShiftAction(load, hour, level, direction))
        for load in range(demand.shape[1])
        for hour in range(24)
        for level in range(len(SHIFT_FRACTIONS))
        for direction in directions
    ]
    best = max(values)
    assert best > 0
    picked = env.decode(int(chosen[0]))
    assert value(picked) == pytest.approx(best, rel=1e-5)
    assert int(chosen[0]) == env.codec.encode_flat(picked) and values[int(chosen[0])] == pytest.approx(
        best, rel=1e-5
    )
