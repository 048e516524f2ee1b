# syntax=docker/dockerfile:1
# fedge edge agent, NVIDIA GPU build: CUDA 12 + cuDNN 9 runtime, `fedge[agent]` with onnxruntime-gpu in
# place of the CPU onnxruntime (same version), non-root. Needs the NVIDIA Container Toolkit on the host.
#
#   docker build -f packaging/docker/agent-cuda.Dockerfile -t fedge-agent:cuda .
#   docker run --rm -v fedge-agent:/var/lib/fedge-agent fedge-agent:cuda \
#       enroll --controller https://ctl.example --token fedge-enroll-... --state-dir /var/lib/fedge-agent
#   docker run -d --gpus all --restart=on-failure -v fedge-agent:/var/lib/fedge-agent \
#       -p 127.0.0.1:8470:8470 --cap-drop=ALL --security-opt no-new-privileges fedge-agent:cuda
#   docker run --rm --gpus all fedge-agent:cuda facts    # ort_providers lists CUDAExecutionProvider

ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}
ARG ORT_VERSION=1.32.0
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY edge_agent ./edge_agent
COPY simulator ./simulator
COPY contracts ./contracts
COPY fedge_protocol ./fedge_protocol
COPY fedge_common ./fedge_common
# Install the agent extra, then swap the CPU build of ONNX Runtime for the CUDA one: both ship the
# `onnxruntime` module, so the CPU package is removed first.
RUN python3.11 -m venv /opt/fedge-agent/venv \
 && /opt/fedge-agent/venv/bin/pip install '.[agent]' \
 && /opt/fedge-agent/venv/bin/pip uninstall --yes onnxruntime \
 && /opt/fedge-agent/venv/bin/pip install "onnxruntime-gpu==${ORT_VERSION}" \
 && /opt/fedge-agent/venv/bin/fedge-agent version \
 && rm -rf /src
RUN groupadd --system --gid 10001 fedge-agent \
 && useradd --system --uid 10001 --gid fedge-agent --home-dir /var/lib/fedge-agent --no-create-home \
        --shell /usr/sbin/nologin fedge-agent \
 && install -d -o fedge-agent -g fedge-agent -m 0700 /var/lib/fedge-agent
ENV PATH=/opt/fedge-agent/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FEDGE_AGENT_STATE_DIR=/var/lib/fedge-agent \
    FEDGE_AGENT_API_HOST=0.0.0.0 \
    FEDGE_AGENT_API_PORT=8470 \
    FEDGE_AGENT_PROVIDERS='["CUDAExecutionProvider"]' \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER fedge-agent:fedge-agent
WORKDIR /var/lib/fedge-agent
VOLUME ["/var/lib/fedge-agent"]
EXPOSE 8470
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8470/healthz', timeout=4)"]
ENTRYPOINT ["fedge-agent"]
CMD ["run", "--state-dir", "/var/lib/fedge-agent"]
