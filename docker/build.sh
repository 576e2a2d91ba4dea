#!/usr/bin/env bash
# Build the ogpo worker image (docker/Dockerfile) with whatever engine this machine has:
# `docker build` when a Docker engine answers (`docker info`), else buildah (chroot isolation: no daemon,
# no user namespaces), else a clear error.
#
#   docker/build.sh [--variant cpu|gpu] [--base IMAGE] [--tag TAG] [--torch-index URL]
#                   [--wheels DIR] [--pip-cert FILE] [--engine auto|docker|buildah] [-- EXTRA_BUILD_ARGS...]
#
# Defaults per variant:
#   cpu  base python:3.11-slim-bookworm, torch from https://download.pytorch.org/whl/cpu, tag ogpo-worker:cpu
#   gpu  base nvidia/cuda:12.9.1-base-ubuntu22.04, torch from PyPI (CUDA build), tag ogpo-worker:gpu
# --torch-index ''  installs torch from PyPI (or from --wheels, where a local torch==X+cpu wins).
# --wheels DIR      offers DIR/*.whl to pip (bind-mounted at build time, never copied into the image);
#                   default $OGPO_WHEELS_DIR.
# --pip-cert FILE   CA bundle for pip behind a TLS-intercepting proxy, passed as a build secret (never
#                   baked in); default $OGPO_PIP_CERT, else $PIP_CERT when it names a file.
# Prints the image reference on the last line of stdout.
set -euo pipefail

die() {
	echo "build.sh: $*" >&2
	exit 2
}

root=$(cd "$(dirname "$0")/.." && pwd)
variant=cpu
base=""
tag=""
torch_index="__default__"
wheels=${OGPO_WHEELS_DIR:-}
pip_cert=${OGPO_PIP_CERT:-}
if [ -z "$pip_cert" ] && [ -n "${PIP_CERT:-}" ] && [ -f "${PIP_CERT}" ]; then pip_cert=$PIP_CERT; fi
engine=${OGPO_BUILD_ENGINE:-auto}
extra=()

need_value() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
	case $1 in
	--variant) need_value "$@"; variant=$2; shift 2 ;;
	--base) need_value "$@"; base=$2; shift 2 ;;
	--tag) need_value "$@"; tag=$2; shift 2 ;;
	--torch-index) need_value "$@"; torch_index=$2; shift 2 ;;
	--wheels) need_value "$@"; wheels=$2; shift 2 ;;
	--pip-cert) need_value "$@"; pip_cert=$2; shift 2 ;;
	--engine) need_value "$@"; engine=$2; shift 2 ;;
	--) shift; extra=("$@"); break ;;
	-h | --help) sed -n '2,19p' "$0"; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done

case $variant in
cpu)
	: "${base:=python:3.11-slim-bookworm}"
	: "${tag:=ogpo-worker:cpu}"
	flavor=cpu
	[ "$torch_index" = __default__ ] && torch_index=https://download.pytorch.org/whl/cpu
	;;
gpu)
	: "${base:=nvidia/cuda:12.9.1-base-ubuntu22.04}"
	: "${tag:=ogpo-worker:gpu}"
	flavor=cuda
	[ "$torch_index" = __default__ ] && torch_index=""
	;;
*) die "--variant must be cpu or gpu, got '$variant'" ;;
esac
[ -z "$pip_cert" ] || [ -f "$pip_cert" ] || die "--pip-cert: no such file: $pip_cert"
[ -z "$wheels" ] || [ -d "$wheels" ] || die "--wheels: no such directory: $wheels"

if [ "$engine" = auto ]; then
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
		engine=docker
	elif command -v buildah >/dev/null 2>&1; then
		engine=buildah
	else
		die "no container engine: no Docker engine answers 'docker info' and buildah is not installed
  (Debian/Ubuntu: apt-get install buildah; or start a Docker daemon)"
	fi
fi

# Local wheels: hard links (or copies) in docker/wheels/, the build context's bind-mount source; removed after.
staged=()
cleanup() { [ ${#staged[@]} -eq 0 ] || rm -f "${staged[@]}"; }
trap cleanup EXIT
if [ -n "$wheels" ]; then
	for w in "$wheels"/*.whl; do
		[ -e "$w" ] || continue
		dst="$root/docker/wheels/$(basename "$w")"
		[ -e "$dst" ] && continue
		ln "$w" "$dst" 2>/dev/null || cp "$w" "$dst"
		staged+=("$dst")
	done
fi

args=(--file "$root/docker/Dockerfile" --target "$variant" --tag "$tag"
	--build-arg "BASE_IMAGE=$base" --build-arg "TORCH_FLAVOR=$flavor" --build-arg "TORCH_INDEX_URL=$torch_index")
[ -z "$pip_cert" ] || args+=(--secret "id=pip_cert,src=$pip_cert")

echo "build.sh: $engine, variant $variant, base $base, torch $flavor from ${torch_index:-PyPI}, tag $tag" >&2
start=$(date +%s)
case $engine in
docker)
	DOCKER_BUILDKIT=1 docker build "${args[@]}" "${extra[@]}" "$root" >&2
	size=$(docker image inspect --format '{{.Size}}' "$tag")
	;;
buildah)
	# chroot isolation: RUN steps work as root without user namespaces or a daemon; --layers caches steps.
	buildah bud --isolation chroot --layers --network host "${args[@]}" "${extra[@]}" "$root" >&2
	size=$(buildah inspect --type image --format '{{.ImageSize}}' "$tag" 2>/dev/null || echo 0)
	[ "$size" != 0 ] || size=$(podman image inspect --format '{{.Size}}' "$tag" 2>/dev/null || echo 0)
	;;
*) die "--engine must be auto, docker or buildah, got '$engine'" ;;
esac
echo "build.sh: built $tag in $(($(date +%s) - start)) s, $((size / 1000000)) MB" >&2
echo "$tag"
