# GPU worker image: CUDA, vLLM (CUDA build), DeepSpeed and this project, at /opt/alt.
#
#   docker build -f docker/worker.Dockerfile -t alt-worker .        # from the repo root
#   docker run --gpus all -e PREFECT_API_URL=http://HOST:4200/api alt-worker
#
# The devel base brings nvcc: DeepSpeed compiles its CUDA ops (fused Adam, CPU Adam for
# optimizer offload) on first use. vLLM's wheels carry their own CUDA runtime.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-dev python3-venv git build-essential ninja-build \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip

WORKDIR /opt/alt
# The project with its GPU and S3 extras (pyproject.toml: `gpu` = vLLM's CUDA build,
# `s3` = s3fs). Editable, so the flow files workers load (prefect.yaml entrypoints are
# paths under /opt/alt) are the installed code.
COPY pyproject.toml README.md Makefile prefect.yaml ./
COPY alt_core alt_core
COPY tasks_lib tasks_lib
COPY flows flows
COPY deployments deployments
RUN pip install -e ".[gpu,s3]" \
    && alt presets

# One worker per GPU host: docker/worker-entrypoint.sh creates the pool and the host's
# GPU limit, then starts `prefect worker start --pool $ALT_WORK_POOL`.
COPY docker/worker-entrypoint.sh /usr/local/bin/alt-worker-entrypoint
ENV ALT_WORK_POOL=alt-gpu
ENTRYPOINT ["alt-worker-entrypoint"]
