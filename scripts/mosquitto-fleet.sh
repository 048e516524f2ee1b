#!/bin/bash
# Render a Mosquitto 2 configuration for the fedge fleet and (optionally) run Mosquitto with it.
#   scripts/mosquitto-fleet.sh --data-dir .fedge --port 8883 [--host 127.0.0.1] [--user mosquitto] [--run]
# Writes <data-dir>/fleet/mosquitto/: ca.pem (device CA), server.pem/.key (signed by the device CA),
# service.pem/.key (the controller's client certificate, CN fedge-controller), crl.pem, acl,
# mosquitto.conf (TLS listener, require_certificate, use_identity_as_username, crlfile, acl_file,
# pid_file). Then start the controller with FEDGE_BROKER_BACKEND=mosquitto FEDGE_BROKER_PORT=<port>
# and the same FEDGE_DATA_DIR: it rewrites crl.pem and acl and SIGHUPs Mosquitto on revocation.
set -euo pipefail
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
[ -x "$PY" ] || PY=python3
RUN=0; ARGS=()
for a in "$@"; do if [ "$a" = "--run" ]; then RUN=1; else ARGS+=("$a"); fi; done
CONF=$("$PY" -m controller.fleet.broker.mosquitto "${ARGS[@]}")
echo "rendered $CONF" >&2
if [ "$RUN" = 1 ]; then exec /usr/sbin/mosquitto -c "$CONF"; fi
