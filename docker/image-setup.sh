#!/bin/sh
# Steps of docker/Dockerfile, kept in one script so that each RUN line stays short and the logic is testable.
#
#   image-setup.sh os builder|runtime BASE_IMAGE   system packages (+ Python 3.11 when the base lacks it)
#   image-setup.sh deps                            /opt/venv: torch (TORCH_FLAVOR) + pinned dependencies, every
#                                                  transitive one held to docker/constraints.txt
#   image-setup.sh wheel SRC                       build the ogpo wheel into /tmp/dist (builder)
#   image-setup.sh project DIST                    install that wheel into /opt/venv (runtime; no resolution)
#   image-setup.sh user                            the non-root user that runs the worker
#
# Why a base is "supported": the project needs CPython 3.11 (pyproject: >=3.11,<3.12) and glibc >= 2.34
# (manylinux_2_34 wheels). Python images (python:3.11-slim-bookworm) already have it; Debian bookworm and
# Ubuntu 22.04 (the CUDA images) install it from apt. Anything else stops the build with a message that
# names the base image.
#
# Build-time inputs that must never end up in the image: a CA bundle for a TLS-intercepting proxy arrives
# as the build secret `pip_cert` (/run/secrets/pip_cert) and local wheels arrive through a bind mount
# (/wheels); neither is copied into a layer.
set -eu

say() { printf 'ogpo-image: %s\n' "$*"; }
die() {
	printf 'ogpo-image: ERROR: %s\n' "$*" >&2
	exit 1
}

# System packages the worker needs at run time: git (Prefect's git_clone pull step, DVC), CA roots (HTTPS
# to S3 and git hosts), headless MuJoCo rendering (OSMesa for MUJOCO_GL=osmesa, libEGL for MUJOCO_GL=egl
# with the NVIDIA driver's vendor library injected by the container toolkit), libGL + GLib (opencv, which
# robosuite imports).
RUNTIME_PKGS="ca-certificates git libosmesa6 libegl1 libgl1 libglib2.0-0"
# Builder only: one dependency (evdev, via robosuite -> pynput) is an sdist with a C extension.
BUILD_PKGS="gcc libc6-dev linux-libc-dev"
PIP_VERSION=26.3

find_python() {
	for p in python3.11 /usr/local/bin/python3.11 /usr/bin/python3.11; do
		if command -v "$p" >/dev/null 2>&1; then
			command -v "$p"
			return 0
		fi
	done
	return 1
}

os_step() {
	role=$1
	base=${2:-}
	[ -n "$base" ] || die "BASE_IMAGE is empty: pass --build-arg BASE_IMAGE=<image> (e.g. python:3.11-slim-bookworm)"
	case $role in builder | runtime) ;; *) die "os step: role must be builder or runtime, got '$role'" ;; esac
	if ! command -v apt-get >/dev/null 2>&1; then
		die "BASE_IMAGE=$base is not supported: it has no apt-get (need a Debian bookworm or Ubuntu 22.04 based image)"
	fi
	pkgs=$RUNTIME_PKGS
	[ "$role" = builder ] && pkgs="$pkgs $BUILD_PKGS"
	if py=$(find_python); then
		say "using $py from the base image"
		# A Python image ships its headers; a Debian python3.11 needs the -dev package to compile evdev.
		if [ "$role" = builder ] && [ "$py" = /usr/bin/python3.11 ]; then pkgs="$pkgs python3.11-dev python3.11-venv"; fi
	else
		pkgs="$pkgs python3.11"
		[ "$role" = builder ] && pkgs="$pkgs python3.11-dev python3.11-venv"
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq || die "apt-get update failed in BASE_IMAGE=$base (no network, or no usable apt sources)"
	# shellcheck disable=SC2086
	if ! apt-get install -y -qq --no-install-recommends $pkgs >/tmp/apt.log 2>&1; then
		tail -n 20 /tmp/apt.log >&2
		die "BASE_IMAGE=$base is not supported: apt cannot install: $pkgs (it needs Python 3.11 packages, e.g. Debian bookworm or Ubuntu 22.04)"
	fi
	rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /tmp/apt.log
	py=$(find_python) || die "BASE_IMAGE=$base is not supported: no python3.11 after installing packages"
	"$py" - "$base" <<'EOF' || exit 1
import sys
base = sys.argv[1]
if sys.version_info[:2] != (3, 11):
    sys.exit(f"ogpo-image: ERROR: BASE_IMAGE={base} is not supported: python3.11 reports {sys.version.split()[0]}")
import os
libc = os.confstr("CS_GNU_LIBC_VERSION") or "glibc 0.0"
major, minor = (int(x) for x in libc.split()[1].split(".")[:2])
if (major, minor) < (2, 34):
    sys.exit(f"ogpo-image: ERROR: BASE_IMAGE={base} is not supported: {libc} < 2.34 (manylinux_2_34 wheels)")
print(f"ogpo-image: Python {sys.version.split()[0]} at {sys.executable}, {libc}")
EOF
}

pip_env() {
	# The CA bundle of a TLS-intercepting proxy, only for this RUN (a build secret, never a layer).
	if [ -s /run/secrets/pip_cert ]; then
		export PIP_CERT=/run/secrets/pip_cert
		say "using the build secret pip_cert as pip's CA bundle"
	fi
	export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-120}"
	FIND_LINKS=""
	if [ -d /wheels ] && ls /wheels/*.whl >/dev/null 2>&1; then
		FIND_LINKS="--find-links /wheels"
		say "local wheels offered to pip: $(find /wheels -maxdepth 1 -name '*.whl' -exec basename {} \; | tr '\n' ' ')"
	fi
}

deps_step() {
	flavor=${TORCH_FLAVOR:-}
	case $flavor in
	cpu | cuda) ;;
	*) die "TORCH_FLAVOR must be cpu or cuda, got '${flavor}'" ;;
	esac
	[ -f /tmp/ogpo/pyproject.toml ] || die "deps step: /tmp/ogpo/pyproject.toml is missing"
	[ -f /tmp/ogpo/constraints.txt ] || die "deps step: /tmp/ogpo/constraints.txt is missing"
	py=$(find_python) || die "deps step: no python3.11"
	pip_env
	"$py" -m venv /opt/venv
	# One pip on every base (Debian's venv brings 23.0, python images another): same resolver, wheel builds.
	/opt/venv/bin/pip install "pip==$PIP_VERSION"
	/opt/venv/bin/python - >/tmp/ogpo/requirements.txt <<'EOF'
import tomllib
with open("/tmp/ogpo/pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
	torch_req=$(grep -E '^torch==' /tmp/ogpo/requirements.txt) || die "pyproject.toml does not pin torch (torch==X)"
	index_args=""
	[ -n "${TORCH_INDEX_URL:-}" ] && index_args="--index-url ${TORCH_INDEX_URL}"
	say "installing $torch_req (flavor $flavor) from ${TORCH_INDEX_URL:-the default index}"
	# shellcheck disable=SC2086
	/opt/venv/bin/pip install $FIND_LINKS $index_args -c /tmp/ogpo/constraints.txt "$torch_req"
	/opt/venv/bin/python - "$flavor" <<'EOF' || exit 1
import sys
import torch
flavor = sys.argv[1]
cuda = torch.version.cuda
if flavor == "cpu" and cuda is not None:
    sys.exit(f"ogpo-image: ERROR: TORCH_FLAVOR=cpu but pip installed torch {torch.__version__} built for CUDA {cuda}; "
             "set TORCH_INDEX_URL to the CPU wheel index (https://download.pytorch.org/whl/cpu)")
if flavor == "cuda" and cuda is None:
    sys.exit(f"ogpo-image: ERROR: TORCH_FLAVOR=cuda but pip installed the CPU build torch {torch.__version__}; "
             "leave TORCH_INDEX_URL empty (PyPI) or point it at a CUDA wheel index")
print(f"ogpo-image: torch {torch.__version__} (CUDA {cuda})")
EOF
	# shellcheck disable=SC2086
	/opt/venv/bin/pip install $FIND_LINKS -c /tmp/ogpo/constraints.txt -r /tmp/ogpo/requirements.txt
	/opt/venv/bin/pip check
	# Test suites that ship inside wheels (pandas, scipy, torch, ...: ~150 MB) are never imported by a worker.
	site=$(/opt/venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")
	find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
	rm -rf "$site/torch/test"
	rm -rf /tmp/ogpo
}

wheel_step() {
	src=${1:-}
	[ -f "$src/pyproject.toml" ] || die "wheel step: no pyproject.toml in '$src'"
	pip_env
	# A wheel, installed by the runtime stage: a code change then rebuilds two small layers, not the venv.
	/opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/dist "$src"
	rm -rf "$src"
}

project_step() {
	dist=${1:-}
	set -- "$dist"/ogpo-*.whl
	[ -f "$1" ] || die "project step: no ogpo wheel in '$dist'"
	# Dependencies are already in /opt/venv (deps step); --no-deps --no-index: nothing is resolved or fetched.
	/opt/venv/bin/pip install --no-deps --no-index --no-cache-dir "$1"
	/opt/venv/bin/pip check
	rm -rf "$dist"
	/opt/venv/bin/python -c "import ogpo, pipeline, stages" || die "the installed project does not import"
}

user_step() {
	# A fixed UID/GID so that volumes can be prepared on the host (chown 10001).
	groupadd --gid 10001 ogpo
	useradd --uid 10001 --gid 10001 --create-home --home-dir /home/ogpo --shell /bin/sh ogpo
	# Mount point for named volumes (server data): a new volume takes this directory's owner.
	install -d -o 10001 -g 10001 -m 0750 /home/ogpo/data
}

step=${1:-}
[ $# -gt 0 ] && shift
case $step in
os) os_step "$@" ;;
deps) deps_step ;;
wheel) wheel_step "$@" ;;
project) project_step "$@" ;;
user) user_step ;;
*) die "usage: image-setup.sh os builder|runtime BASE_IMAGE | deps | wheel SRC | project DIST | user" ;;
esac
