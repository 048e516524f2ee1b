"""ClientApp component: the agent's ClientApp (configured by the SuperNode's --node-config)."""

from edge_agent.learning.clientapp import app

__all__ = ["app"]
