"""ClientApp component: the agent's ClientApp (configured by the SuperNode's --node-config) behind the
round-lock mod, so every train/evaluate message holds the agent's update lock (a model swap never lands
mid-round; edge_agent/learning/roundlock.py). Without ``fedge-state-dir`` or an agent listening, the mod
lets the message through unlocked."""

from edge_agent.learning.clientapp import make_client_app
from edge_agent.learning.roundlock import round_lock_mod

app = make_client_app(mods=[round_lock_mod])

__all__ = ["app"]
