# fedge edge agent, NVIDIA GPU build: `fedge[agent]` with ONNX Runtime's CUDA build (onnxruntime-gpu,
# same version) when its wheel is in the build context, non-root.
#
# Here (no container registry) it builds FROM fedge's own Debian base, like the CPU image: without an
# onnxruntime_gpu wheel in the wheelhouse it keeps the CPU onnxruntime and the CUDA provider list falls
# back to the CPU. Where a GPU and a registry exist, build on NVIDIA's CUDA 12 + cuDNN 9 runtime (Debian
# or Ubuntu based, with python3 3.11) and add the CUDA wheel to the context:
#   packaging/wheelhouse.sh agent dist/wheelhouse-cuda
#   pip download --no-deps --only-binary=:all: -d dist/wheelhouse-cuda onnxruntime-gpu==1.32.0
#   podman build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 \
#       -f packaging/docker/agent-cuda.Dockerfile -t localhost/fedge-agent-cuda:dev dist/wheelhouse-cuda
#   podman run -d --device nvidia.com/gpu=all -v fedge-agent:/var/lib/fedge-agent localhost/fedge-agent-cuda:dev
#   podman run --rm --device nvidia.com/gpu=all localhost/fedge-agent-cuda:dev facts  # ort_providers: CUDA
# (Ubuntu 22.04's python3 is 3.10: install python3.11 there and pass --build-arg PYTHON=python3.11.)
ARG BASE_IMAGE=localhost/fedge-base:bookworm
FROM ${BASE_IMAGE}
ARG PYTHON=python3
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends "${PYTHON}" "${PYTHON}-venv" ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
# Both ONNX Runtime builds ship the `onnxruntime` module: the CPU package goes before the CUDA one comes.
RUN --mount=type=bind,target=/tmp/wheelhouse "${PYTHON}" -m venv /opt/fedge-agent/venv \
 && pip="/opt/fedge-agent/venv/bin/pip install --quiet --no-index --find-links /tmp/wheelhouse" \
 && $pip 'fedge[agent]' \
 && if ls /tmp/wheelhouse/onnxruntime_gpu-*.whl >/dev/null 2>&1; then \
        /opt/fedge-agent/venv/bin/pip uninstall --quiet --yes onnxruntime && $pip onnxruntime-gpu; \
    fi \
 && /opt/fedge-agent/venv/bin/fedge-agent version
RUN groupadd --system --gid 10001 fedge-agent \
 && useradd --system --uid 10001 --gid fedge-agent --home-dir /var/lib/fedge-agent --no-create-home \
        --shell /usr/sbin/nologin fedge-agent \
 && install -d -o fedge-agent -g fedge-agent -m 0700 /var/lib/fedge-agent
ENV PATH=/opt/fedge-agent/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FEDGE_AGENT_STATE_DIR=/var/lib/fedge-agent \
    FEDGE_AGENT_API_HOST=0.0.0.0 \
    FEDGE_AGENT_API_PORT=8470 \
    FEDGE_AGENT_PROVIDERS='["CUDAExecutionProvider", "CPUExecutionProvider"]' \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER fedge-agent:fedge-agent
WORKDIR /var/lib/fedge-agent
VOLUME ["/var/lib/fedge-agent"]
EXPOSE 8470
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["sh", "-c", "python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:'+'${FEDGE_AGENT_API_PORT}'+'/healthz', timeout=4)\""]
ENTRYPOINT ["fedge-agent"]
CMD ["run", "--state-dir", "/var/lib/fedge-agent"]
