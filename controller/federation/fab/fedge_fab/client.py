"""ClientApp component: the agent's deployment ClientApp (configured by the SuperNode's --node-config),
which runs behind ``round_lock_mod``: every train/evaluate message holds the agent's update lock, so a
model swap never lands mid-round (edge_agent/learning/roundlock.py)."""

from edge_agent.learning.clientapp import app

__all__ = ["app"]
