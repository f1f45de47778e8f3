# The SMT pipeline on a CUDA machine: `docker build -t smt . && docker run --gpus all smt run configs/paper-mnist.yaml`.
# The base image brings CUDA and cuDNN; pip then installs the pinned torch (a CUDA build) and the stack.
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PREFECT_HOME=/data/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    SMT_PROGRESS=1

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
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
COPY prefect.yaml ./
RUN pip install --upgrade pip && pip install -c constraints.txt .

# Artifacts (runs/) and Prefect's database live on a volume so they outlive the container.
RUN mkdir -p /data && cp -r /app/configs /data/configs
WORKDIR /data
VOLUME ["/data"]
ENTRYPOINT ["smt"]
CMD ["--help"]
