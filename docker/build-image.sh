#!/bin/sh
# Build one of Distillery's images (target pipeline or serving) with the engine at hand:
# buildah (works without a container daemon, in sandboxes too), else podman, else docker.
#   docker/build-image.sh TARGET TAG
# BASE_IMAGE (default: a Debian base made locally from Debian's packages, made here if missing;
# set BASE_IMAGE=python:3.11-slim where a container registry can be reached) is used for both
# targets. TORCH_INDEX_URL: an index holding the CPU torch wheel, when pip's own configuration
# (find-links) does not have it.
set -eu
target=${1:?usage: docker/build-image.sh pipeline|serving TAG}
tag=${2:?usage: docker/build-image.sh pipeline|serving TAG}
cd "$(dirname "$0")/.."
# Local Debian bases: the pipeline's (python3, venv, pip, git, make) and a slimmer one for serving.
local_base=localhost/distillery-base:bookworm
local_slim=localhost/distillery-base-slim:bookworm
base=${BASE_IMAGE:-$local_base}
serving_base=${SERVING_BASE_IMAGE:-${BASE_IMAGE:-$local_slim}}

if command -v buildah >/dev/null; then
  build="buildah bud --isolation chroot --layers"; exists="buildah inspect --type image"; importer=podman
elif command -v podman >/dev/null; then
  build="podman build --layers"; exists="podman image exists"; importer=podman
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  build="docker build"; exists="docker image inspect"; importer=docker
else
  echo "image: no container engine; as root: apt-get install -y buildah podman debootstrap" \
       "(or install Docker and start its daemon)" >&2
  exit 1
fi

need_base() {  # IMAGE PACKAGES: make a local base when it is one of ours and missing
  case "$1" in "$local_base"|"$local_slim") ;; *) return 0 ;; esac
  $exists "$1" >/dev/null 2>&1 && return 0
  command -v "$importer" >/dev/null || { echo "image: making the base needs $importer; as root: apt-get install -y podman" >&2; exit 1; }
  docker/make-base.sh "$1" "$importer" ${2:+"$2"}
}
if [ "$target" = pipeline ]; then need_base "$base" ""; else need_base "$serving_base" python3,python3-venv,ca-certificates; fi

if [ "$target" = pipeline ] && [ -z "${TORCH_INDEX_URL:-}" ] && ! ls docker/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
  # The CPU wheel from pip's own configuration (e.g. a find-links folder); never the CUDA build.
  torch="torch==$(python3 docker/pins.py pyproject.toml torch)+cpu"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d docker/wheels "$torch" || {
    echo "image: pip cannot find $torch; put the wheel in docker/wheels/ or set" \
         "TORCH_INDEX_URL to an index that has it (PyTorch's CPU wheel index)" >&2; exit 1; }
fi

# pip's CA bundle (a proxy's CA, where pip is configured with one) as a build secret, never a layer.
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
secret=""
[ -n "$cert" ] && [ -f "$cert" ] && secret="--secret id=pipcert,src=$cert"

[ "$target" = pipeline ] || base=$serving_base
echo "image: building $tag (target $target, base $base)"
# shellcheck disable=SC2086
$build $secret --target "$target" --build-arg BASE_IMAGE="$base" --build-arg SERVING_BASE_IMAGE="$serving_base" \
  ${TORCH_INDEX_URL:+--build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL"} -t "$tag" .
