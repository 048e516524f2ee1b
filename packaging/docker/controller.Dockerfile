# fedge controller: `fedge[controller]` in a venv on Debian 12's python3 (3.11), installed offline from the
# controller wheelhouse (dist/wheelhouse-controller, the build context), non-root, embedded defaults
# (SQLite, local artifact store, embedded MQTT broker) with its data in the /var/lib/fedge volume.
#
#   make images      (or: packaging/wheelhouse.sh controller &&
#                     packaging/images/podman.sh build --pull=never -f packaging/docker/controller.Dockerfile \
#                         -t localhost/fedge-controller:dev dist/wheelhouse-controller)
#   podman run -d -v fedge-data:/var/lib/fedge -p 127.0.0.1:8400:8400 localhost/fedge-controller:dev
# PostgreSQL/S3 and the rest: FEDGE_* variables (README, configuration table).
ARG BASE_IMAGE=localhost/fedge-base:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
# the wheelhouse is bind-mounted from the build context: it never becomes a layer of the image
RUN --mount=type=bind,target=/tmp/wheelhouse python3 -m venv /opt/fedge/venv \
 && /opt/fedge/venv/bin/pip install --quiet --no-index --no-deps -r /tmp/wheelhouse/requirements.txt \
        --find-links /tmp/wheelhouse \
 && /opt/fedge/venv/bin/pip install --quiet --no-index --no-deps --find-links /tmp/wheelhouse fedge \
 && /opt/fedge/venv/bin/fedge-controller --help >/dev/null
RUN groupadd --system --gid 10002 fedge \
 && useradd --system --uid 10002 --gid fedge --home-dir /var/lib/fedge --no-create-home \
        --shell /usr/sbin/nologin fedge \
 && install -d -o fedge -g fedge -m 0700 /var/lib/fedge
ENV PATH=/opt/fedge/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FEDGE_DATA_DIR=/var/lib/fedge \
    FEDGE_HOST=0.0.0.0 \
    FEDGE_PORT=8400
USER fedge:fedge
WORKDIR /var/lib/fedge
VOLUME ["/var/lib/fedge"]
EXPOSE 8400 1883
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["sh", "-c", "python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:'+'${FEDGE_PORT}'+'/healthz', timeout=4)\""]
ENTRYPOINT ["fedge-controller"]
CMD ["serve"]
