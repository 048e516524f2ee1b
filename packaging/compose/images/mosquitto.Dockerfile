# Mosquitto 2.0 from Debian 12; its configuration (mTLS with the controller's device CA, CRL, ACL) is
# rendered into the controller's data volume by the stack's mosquitto-init step.
FROM localhost/fedge-base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/usr/sbin/mosquitto"]
CMD ["-c", "/var/lib/fedge/fleet/mosquitto/mosquitto.conf"]
