# syntax=docker/dockerfile:1
#
# The loraforge GPU worker image: `loraforge worker` and the trainer's pinned Python environment.
# Two targets (docs/worker-image.md):
#
#   docker build -f docker/worker.Dockerfile -t IMAGE:TAG .                        # `worker` (default): CMD loraforge worker
#   docker build -f docker/worker.Dockerfile --target serverless -t IMAGE:TAG-sls . # RunPod serverless handler
#
# Build from the repository root (the context needs Cargo.toml, Cargo.lock, crates/, trainer/ and
# docker/; .dockerignore keeps everything else out). Needs BuildKit (the default builder).
#
# NOT BUILT IN THE ENVIRONMENT THAT WROTE IT (no Docker engine there): see docs/worker-image.md
# for what was tested instead.

# Rust 1.95 (the toolchain the workspace is built and tested with; edition 2024, rust-version
# 1.94). Bookworm on purpose: the binary links glibc dynamically, and the builder's glibc (2.36)
# must not be newer than the runtime's (Ubuntu 24.04: 2.39). A trixie builder (glibc 2.41) would
# produce a binary that does not start on the runtime image.
ARG RUST_IMAGE=rust:1.95-bookworm

# The runtime base. torch 2.15.0 from PyPI (trainer/requirements.lock) brings its own CUDA 13.2
# libraries (nvidia-*-cu13 wheels, cuda-toolkit 13.2.2) and loads those, not the base image's, so
# the base is there for the driver plumbing: the NVIDIA container runtime mounts the host driver
# into it, and its NVIDIA_REQUIRE_CUDA ("cuda>=13.0") makes a host whose driver is too old for
# CUDA 13 (< 580) refuse to start the container instead of torch silently training on the CPU.
# 13.0 is the lowest CUDA 13 minor, so the image asks for no newer driver than torch itself needs
# (CUDA minor-version compatibility covers torch's 13.2 libraries on a 580 driver). Ubuntu 24.04
# for a glibc that the bookworm-built binary runs on. The `-base-` variant of the same tag (no
# CUDA libraries, ~1 GB smaller) works the same for this image: --build-arg CUDA_IMAGE=….
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
# aws-lc-sys (rustls' crypto, via jsonwebtoken/sqlx/reqwest) builds its C code with cc; cmake is
# its fallback build system and cheap to have.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# The trainer's sources and lock are compiled into the binary (include_str!, trainer_env.rs).
COPY trainer trainer
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p loraforge \
    && install -m 0755 target/release/loraforge /usr/local/bin/loraforge

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# CPython 3.11 from the deadsnakes PPA: the trainer's lock was frozen on CPython 3.11 and Ubuntu
# 24.04's own python3 is 3.12. software-properties-common (add-apt-repository) is removed again
# afterwards. tini is PID 1: it forwards SIGTERM to the worker (or the handler) and reaps
# orphans. ca-certificates: the worker's HTTPS calls and Hugging Face downloads.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates software-properties-common gpg-agent tini \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove software-properties-common gpg-agent \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 --version

# The trainer's venv, exactly as scripts/pinned-venv.sh builds it: every package of the lock at
# its exact version, --no-deps (the lock is complete). ~6 GB, mostly torch and its CUDA wheels; a
# layer of its own so a change elsewhere reuses it. The trainer package itself is not installed:
# the binary writes its embedded copy under $LORAFORGE_DATA_DIR/trainer/<hash>/ and puts it on
# PYTHONPATH.
COPY trainer/requirements.lock /opt/loraforge/requirements.lock
RUN python3.11 -m venv /opt/loraforge/venv \
    && /opt/loraforge/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check --no-input \
        --no-deps -r /opt/loraforge/requirements.lock \
    && /opt/loraforge/venv/bin/python -c 'import torch, diffusers, transformers, peft, safetensors, accelerate, PIL' \
    && /opt/loraforge/venv/bin/python -m pip check

COPY --from=builder /usr/local/bin/loraforge /usr/local/bin/loraforge

# How the binary finds the trainer (trainer_env.rs) and where it keeps its own files (the
# extracted trainer sources). Everything else the worker reads from the environment at start:
# LORAFORGE_SERVER, LORAFORGE_LORA_ID, LORAFORGE_WORKER_TOKEN (required), LORAFORGE_WORKER_SCRATCH,
# LORAFORGE_HF_HOME, HF_TOKEN (optional); docs/worker-image.md.
ENV LORAFORGE_TRAINER_PYTHON=/opt/loraforge/venv/bin/python \
    LORAFORGE_DATA_DIR=/var/lib/loraforge \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Build-time check, no GPU needed: the binary runs, extracts its trainer sources into the data
# dir (so the first job does not) and imports the trainer through the venv, as `doctor` does.
RUN mkdir -p /var/lib/loraforge \
    && loraforge --help >/dev/null \
    && loraforge setup-trainer

# Root, on purpose: RunPod mounts its volumes (/runpod-volume for serverless, /workspace for pods)
# root-owned, and the Hugging Face cache with the base weights lives there; a non-root user could
# not write its download locks or a first download. To run as another user elsewhere, give it a
# writable LORAFORGE_DATA_DIR, LORAFORGE_WORKER_SCRATCH and LORAFORGE_HF_HOME (`docker run --user`).
WORKDIR /var/lib/loraforge
ENTRYPOINT ["/usr/bin/tini", "--"]

# ---------------------------------------------------------------------------------------------
# RunPod serverless: the same image plus the runpod SDK and docker/runpod_handler.py, which runs
# `loraforge worker` once per RunPod job. The SDK gets a small venv of its own, from an exact
# lock installed --no-deps, so its dependencies (aiohttp, fastapi, boto3, …) never move a pin of
# the trainer's venv.
FROM runtime AS serverless
COPY docker/requirements-serverless.txt /opt/loraforge/requirements-serverless.txt
RUN python3.11 -m venv /opt/loraforge/serverless-venv \
    && /opt/loraforge/serverless-venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
        --no-input --no-deps -r /opt/loraforge/requirements-serverless.txt \
    && /opt/loraforge/serverless-venv/bin/python -m pip check \
    && /opt/loraforge/serverless-venv/bin/python -c 'import runpod.serverless'
COPY docker/runpod_handler.py /opt/loraforge/runpod_handler.py
# `python` is the SDK's venv; the trainer keeps its own (LORAFORGE_TRAINER_PYTHON). INFO, not the
# SDK's default DEBUG: at DEBUG the SDK may print job inputs, which hold the worker token.
ENV PATH=/opt/loraforge/serverless-venv/bin:$PATH \
    RUNPOD_LOG_LEVEL=INFO
RUN python -c 'import sys; sys.path.insert(0, "/opt/loraforge"); import runpod_handler'
CMD ["python", "/opt/loraforge/runpod_handler.py"]

# ---------------------------------------------------------------------------------------------
# The default target (last stage): a RunPod pod, or any container host, runs one attempt with
# LORAFORGE_SERVER, LORAFORGE_LORA_ID and LORAFORGE_WORKER_TOKEN in its environment.
FROM runtime AS worker
CMD ["loraforge", "worker"]
