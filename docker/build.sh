#!/usr/bin/env bash
# Build the image and run the demo in it, with no image registry: the base is Debian made by debootstrap
# from the Debian mirror and imported into Docker; torch is the local CPU wheel (docker/wheels/).
#
#   bash docker/build.sh                  # needs dockerd running and debootstrap (apt install docker.io debootstrap)
#   BASE_IMAGE=python:3.11-slim-bookworm bash docker/build.sh    # where a registry is reachable
#   EXTRA_CA_CERTS="$(ls /usr/local/share/ca-certificates/*.crt)" bash docker/build.sh   # behind a TLS proxy
#
# Writes the demo's artifacts to $OUT (default ./docker-out) through a mounted volume.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-smt-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
OUT=${OUT:-$PWD/docker-out}
WHEELS=${WHEELS:-/opt/wheels}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "building base image $BASE_IMAGE with debootstrap from $MIRROR"
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,build-essential,ca-certificates \
    bookworm "$rootfs" "$MIRROR"
  tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE"
  rm -rf "$rootfs"
fi

mkdir -p docker/wheels docker/certs
# a proxy that re-signs TLS (as in this sandbox): EXTRA_CA_CERTS="/path/a.crt /path/b.crt" bash docker/build.sh
for cert in ${EXTRA_CA_CERTS:-}; do cp "$cert" docker/certs/; done
find "$WHEELS" -maxdepth 1 -name 'torch-2.13.0*.whl' -exec cp -n {} docker/wheels/ \; 2>/dev/null || true
docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -t smt:latest .
docker image ls smt:latest

mkdir -p "$OUT"
time docker run --rm --network host --shm-size=2g --user "$(id -u):$(id -g)" -e HOME=/data -v "$OUT:/data" smt:latest run /app/configs/demo.yaml --root /data/runs
ls "$OUT"/runs
