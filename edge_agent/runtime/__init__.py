"""ONNX Runtime sessions: provider choice, health check, warm-up and hot swap."""

from edge_agent.runtime.providers import select_providers
from edge_agent.runtime.session import HealthCheckFailed, ModelRuntime, health_check

__all__ = ["HealthCheckFailed", "ModelRuntime", "health_check", "select_providers"]
