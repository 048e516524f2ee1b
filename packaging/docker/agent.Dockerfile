# fedge edge agent, CPU build: `fedge[agent]` (ONNX Runtime CPU, no torch/FastAPI/web3) in a venv on
# Debian 12's python3 (3.11), installed offline from the agent wheelhouse, non-root.
# No registry is needed: the base is fedge's own debootstrapped Debian (packaging/images/build-base.sh).
#
#   make images      (or: packaging/wheelhouse.sh agent &&
#                     packaging/images/podman.sh build --pull=never -f packaging/docker/agent.Dockerfile \
#                         -t localhost/fedge-agent:dev dist/wheelhouse)
#   podman run --rm -v fedge-agent:/var/lib/fedge-agent localhost/fedge-agent:dev \
#       enroll --controller https://ctl.example --token fedge-enroll-... --state-dir /var/lib/fedge-agent
#   podman run -d -v fedge-agent:/var/lib/fedge-agent -p 127.0.0.1:8470:8470 localhost/fedge-agent:dev
# The build context is the wheelhouse directory (dist/wheelhouse) and nothing else.
ARG BASE_IMAGE=localhost/fedge-base:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
# the wheelhouse is bind-mounted from the build context: it never becomes a layer of the image
RUN --mount=type=bind,target=/tmp/wheelhouse python3 -m venv /opt/fedge-agent/venv \
 && /opt/fedge-agent/venv/bin/pip install --quiet --no-index --find-links /tmp/wheelhouse 'fedge[agent]' \
 && /opt/fedge-agent/venv/bin/fedge-agent version
RUN groupadd --system --gid 10001 fedge-agent \
 && useradd --system --uid 10001 --gid fedge-agent --home-dir /var/lib/fedge-agent --no-create-home \
        --shell /usr/sbin/nologin fedge-agent \
 && install -d -o fedge-agent -g fedge-agent -m 0700 /var/lib/fedge-agent
# Inside the container the API listens on all of the container's interfaces, so that a published port
# reaches it; publish it on the host's loopback only (-p 127.0.0.1:8470:8470).
ENV PATH=/opt/fedge-agent/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FEDGE_AGENT_STATE_DIR=/var/lib/fedge-agent \
    FEDGE_AGENT_API_HOST=0.0.0.0 \
    FEDGE_AGENT_API_PORT=8470
USER fedge-agent:fedge-agent
WORKDIR /var/lib/fedge-agent
VOLUME ["/var/lib/fedge-agent"]
EXPOSE 8470
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["sh", "-c", "python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:'+'${FEDGE_AGENT_API_PORT}'+'/healthz', timeout=4)\""]
ENTRYPOINT ["fedge-agent"]
CMD ["run", "--state-dir", "/var/lib/fedge-agent"]
