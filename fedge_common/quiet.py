"""The environment every process fedge starts runs with: nothing contacts an outside host.

Flower posts telemetry and checks for updates by default, Ray reports usage and may bind the host's
non-loopback address, Evidently tracks. These values turn all of that off; the controller (SuperLink),
the agent (SuperNode), the simulator (Ray), the demo and the tests set them on every child process.
"""

from __future__ import annotations

QUIET_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
"""Variable -> value, for ``os.environ`` or a child's ``env``."""
