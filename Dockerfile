# The SMT pipeline in a container, with one torch only (the one pinned in constraints.txt).
#
#   bash docker/build.sh                        # here: a debootstrapped Debian base, CPU torch, demo run
#   docker build --build-arg BASE_IMAGE=python:3.11-slim-bookworm -t smt .           # with a registry
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t smt:cuda .
#   docker run --rm --shm-size=8g -v "$PWD/out:/data" smt run /app/configs/demo.yaml --root /data/runs
#
# The base brings Python 3.11 only (no torch of its own, so pip never installs a second one); a C
# compiler is installed because torch.compile (inductor / Triton) builds kernels at run time. Configs
# live in /app/configs, outside the /data volume, so mounting a volume never hides them. DDP and the
# Beam workers share memory through /dev/shm: Docker's default of 64 MB is too small, pass --shm-size.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# extra CA certificates (a proxy that re-signs TLS); docker/certs/ is empty unless build.sh is told
COPY docker/certs/ /usr/local/share/ca-certificates/extra/
RUN if ls /usr/local/share/ca-certificates/extra/*.crt >/dev/null 2>&1; then update-ca-certificates; fi

RUN if ! command -v cc >/dev/null || ! python3 -c "import venv" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential python3-venv \
      && rm -rf /var/lib/apt/lists/*; fi

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PREFECT_HOME=/data/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    SMT_PROGRESS=0 \
    PATH=/opt/smt/bin:$PATH

# torch: a wheel put in docker/wheels/ (build.sh copies the local CPU one), else TORCH_INDEX_URL's build
ARG TORCH_INDEX_URL=
WORKDIR /app
COPY docker/wheels/ /wheels/
COPY pyproject.toml README.md constraints.txt prefect.yaml ./
COPY schemas schemas
COPY models models
COPY training training
COPY sources sources
COPY store store
COPY stages stages
COPY pipelines pipelines
COPY flows flows
COPY cli cli
COPY configs configs
COPY bench bench
RUN python3 -m venv /opt/smt \
    && /opt/smt/bin/pip install --upgrade pip \
    && /opt/smt/bin/pip install --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url ${TORCH_INDEX_URL}} \
         -c constraints.txt "torch==2.13.0" \
    && /opt/smt/bin/pip install --find-links /wheels -c constraints.txt ".[dask]" \
    && rm -rf /wheels

WORKDIR /data
VOLUME ["/data"]
ENTRYPOINT ["smt"]
CMD ["run", "/app/configs/demo.yaml", "--root", "/data/runs"]
