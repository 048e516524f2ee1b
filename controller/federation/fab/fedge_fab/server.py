"""ServerApp component: the controller's ServerApp, restricted to the job's participant nodes."""

from controller.federation.flower_app import server_app as app

__all__ = ["app"]
