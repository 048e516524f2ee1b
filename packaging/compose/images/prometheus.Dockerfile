# Prometheus 2.42 from Debian 12.
FROM localhost/fedge-base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends prometheus curl \
    && rm -rf /var/lib/apt/lists/*
COPY prometheus.yml /etc/fedge/prometheus.yml.in
COPY prometheus-entrypoint.sh /usr/local/bin/prometheus-entrypoint.sh
ENTRYPOINT ["/bin/sh", "/usr/local/bin/prometheus-entrypoint.sh"]
