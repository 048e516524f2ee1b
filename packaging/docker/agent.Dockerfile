# syntax=docker/dockerfile:1
# fedge edge agent, CPU build: `fedge[agent]` (ONNX Runtime CPU, no torch/FastAPI/web3), non-root.
#
#   docker build -f packaging/docker/agent.Dockerfile -t fedge-agent:cpu .
#   docker volume create fedge-agent
#   docker run --rm -v fedge-agent:/var/lib/fedge-agent fedge-agent:cpu \
#       enroll --controller https://ctl.example --token fedge-enroll-... --state-dir /var/lib/fedge-agent
#   docker run -d --restart=on-failure -v fedge-agent:/var/lib/fedge-agent -p 127.0.0.1:8470:8470 \
#       --read-only --tmpfs /tmp --cap-drop=ALL --security-opt no-new-privileges fedge-agent:cpu

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY edge_agent ./edge_agent
COPY simulator ./simulator
COPY contracts ./contracts
COPY fedge_protocol ./fedge_protocol
COPY fedge_common ./fedge_common
RUN python -m venv /opt/fedge-agent/venv \
 && /opt/fedge-agent/venv/bin/pip install '.[agent]' \
 && /opt/fedge-agent/venv/bin/fedge-agent version

FROM python:3.11-slim
RUN groupadd --system --gid 10001 fedge-agent \
 && useradd --system --uid 10001 --gid fedge-agent --home-dir /var/lib/fedge-agent --no-create-home \
        --shell /usr/sbin/nologin fedge-agent \
 && install -d -o fedge-agent -g fedge-agent -m 0700 /var/lib/fedge-agent
COPY --from=build /opt/fedge-agent/venv /opt/fedge-agent/venv
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
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8470/healthz', timeout=4)"]
ENTRYPOINT ["fedge-agent"]
CMD ["run", "--state-dir", "/var/lib/fedge-agent"]
