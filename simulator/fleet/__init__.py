"""Fleet simulator: N in-process edge agents against one controller (scale tests, benchmarks, the demo).

``python -m simulator.fleet --controller URL --token ADMIN --agents N`` enrolls (or reuses) N devices and
runs their loops until interrupted, printing a summary of what they serve.
"""

from simulator.fleet.core import Event, Fleet, LightRuntime, SimAgent, light_health_check, light_session

__all__ = ["Event", "Fleet", "LightRuntime", "SimAgent", "light_health_check", "light_session"]
