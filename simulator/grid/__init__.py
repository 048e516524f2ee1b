"""UC9 grid simulator (pandapower + SimBench profiles) and RL load-shifting optimizer.

Public names: the grid (:data:`UC9_GRID`, :class:`GridModel`), one simulated day (:class:`DaySimulation`),
the day metrics (:class:`DayMetrics`), the Gymnasium environment (:class:`LoadShiftEnv`), baseline
policies, the RL backend interface (:class:`RLBackend`, :func:`get_backend`, :func:`load_policy`) and the
error tree (:mod:`simulator.grid.errors`). The CLI lives in :mod:`simulator.grid.cli` (``fedge grid``).
Heavy libraries (pandapower, Stable-Baselines3, torch) are imported only when used.
"""

from simulator.grid.actions import SHIFT_FRACTIONS, ActionCodec, ShiftAction
from simulator.grid.env import LoadShiftEnv
from simulator.grid.errors import (
    DayNotAvailableError,
    GridDataError,
    GridError,
    InvalidActionError,
    MissingExtraError,
    PolicyError,
    PowerFlowDivergedError,
)
from simulator.grid.evaluate import EvaluationReport, evaluate, run_episode
from simulator.grid.metrics import DayMetrics, day_metrics
from simulator.grid.model import GridModel
from simulator.grid.network import UC9_GRID, GridSpec, LoadSpec, PVSpec, build_network
from simulator.grid.policies import NoShift, Policy, PvPeakHeuristic, SurplusBoundaryRule
from simulator.grid.powerflow import NewtonSolver, PandapowerSolver, PowerFlowSolver
from simulator.grid.rl import RLBackend, TrainConfig, TrainedPolicy, get_backend, load_policy
from simulator.grid.simulation import DaySimulation

__all__ = [
    "SHIFT_FRACTIONS",
    "UC9_GRID",
    "ActionCodec",
    "DayMetrics",
    "DayNotAvailableError",
    "DaySimulation",
    "EvaluationReport",
    "GridDataError",
    "GridError",
    "GridModel",
    "GridSpec",
    "InvalidActionError",
    "LoadShiftEnv",
    "LoadSpec",
    "MissingExtraError",
    "NewtonSolver",
    "NoShift",
    "PVSpec",
    "PandapowerSolver",
    "Policy",
    "PolicyError",
    "PowerFlowDivergedError",
    "PowerFlowSolver",
    "PvPeakHeuristic",
    "RLBackend",
    "ShiftAction",
    "SurplusBoundaryRule",
    "TrainConfig",
    "TrainedPolicy",
    "build_network",
    "day_metrics",
    "evaluate",
    "get_backend",
    "load_policy",
    "run_episode",
]
