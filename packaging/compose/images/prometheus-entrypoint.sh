#!/bin/sh
# Fill the controller's and agents' scrape addresses from the environment, then run Prometheus.
set -eu
sed -e "s|@CONTROLLER@|${FEDGE_CONTROLLER_TARGET:-127.0.0.1:8400}|" \
    -e "s|@AGENTS@|${FEDGE_AGENT_TARGETS:-127.0.0.1:8500}|" /etc/fedge/prometheus.yml.in > /tmp/prometheus.yml
exec /usr/bin/prometheus --config.file=/tmp/prometheus.yml --storage.tsdb.path=/prometheus \
    --web.listen-address="127.0.0.1:${PROMETHEUS_PORT:-9090}" --web.enable-lifecycle
