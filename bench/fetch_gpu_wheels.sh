#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels a bare GPU host (Python 3.12, x86-64, PyTorch and
# the scientific stack already installed, no network) needs to run tests/test_gpu.py and the benchmarks:
# the packages our code imports that such images usually lack (Beam, Zarr, pydantic) and their own needs.
# Versions are the ones pyproject.toml resolves to on the dev machine. Prefect is not needed for these.
#   bash bench/fetch_gpu_wheels.sh [.whl]    then carry .whl and run bench/gpu_suite.sh there
set -euo pipefail
dest=${1:-.whl}
mkdir -p "$dest"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_34_x86_64 -d "$dest" \
  apache-beam==2.77.0 beartype==0.22.9 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 fastavro==1.13.1 \
  fasteners==0.20 httplib2==0.32.1 jsonpickle==4.1.4 objsize==0.7.1 proto-plus==1.29.0 pymongo==4.20.0 \
  dnspython==2.9.2 pytz==2026.6 zstandard==0.25.0 orjson==3.13.0 \
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
  pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
du -sh "$dest"
