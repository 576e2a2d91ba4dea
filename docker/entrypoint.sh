#!/bin/sh
# Entrypoint of the ogpo worker image: check the object-store settings, then exec the command.
#
# Every stage reads its inputs from and writes its outputs to the S3 store (the only thing workers share),
# so a worker without the store would accept flow runs and fail each one later. Refuse to start instead,
# naming every missing variable. Values are never printed: only the names of variables.
#
# Required:
#   OGPO_S3_BUCKET                                   bucket of the DVC remote
#   OGPO_S3_ENDPOINT | AWS_ENDPOINT_URL_S3 | AWS_ENDPOINT_URL
#                                                    S3 endpoint (SeaweedFS, or https://s3.<region>.amazonaws.com)
#   AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY        credentials (or AWS_PROFILE with a mounted credentials file)
#   PREFECT_API_URL                                  only for `prefect worker ...`
# Docker secrets: AWS_ACCESS_KEY_ID_FILE / AWS_SECRET_ACCESS_KEY_FILE name files whose content is used.
set -eu

err() { printf 'ogpo-entrypoint: %s\n' "$*" >&2; }

# VAR_FILE -> VAR (docker/compose secrets), without echoing the content.
for name in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
	eval "file=\${${name}_FILE:-}"
	if [ -n "$file" ]; then
		eval "val=\${${name}:-}"
		if [ -n "$val" ]; then
			err "both $name and ${name}_FILE are set; set only one"
			exit 64
		fi
		if [ ! -r "$file" ]; then
			err "${name}_FILE names a file that cannot be read: $file"
			exit 64
		fi
		val=$(cat "$file")
		export "$name=$val"
		unset "${name}_FILE" val
	fi
done

missing=""
add() { missing="${missing:+$missing, }$1"; }

[ -n "${OGPO_S3_BUCKET:-}" ] || add "OGPO_S3_BUCKET (bucket of the DVC remote)"
if [ -z "${OGPO_S3_ENDPOINT:-}${AWS_ENDPOINT_URL_S3:-}${AWS_ENDPOINT_URL:-}" ]; then
	add "OGPO_S3_ENDPOINT or AWS_ENDPOINT_URL (S3 endpoint)"
fi
if [ -n "${AWS_PROFILE:-}" ]; then
	if [ -n "${AWS_ACCESS_KEY_ID:-}${AWS_SECRET_ACCESS_KEY:-}" ]; then
		err "set either AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, not both"
		exit 64
	fi
else
	[ -n "${AWS_ACCESS_KEY_ID:-}" ] || add "AWS_ACCESS_KEY_ID"
	[ -n "${AWS_SECRET_ACCESS_KEY:-}" ] || add "AWS_SECRET_ACCESS_KEY"
fi
if [ "${1:-}" = prefect ] && [ "${2:-}" = worker ] && [ -z "${PREFECT_API_URL:-}" ]; then
	add "PREFECT_API_URL (the worker's Prefect server)"
fi

if [ -n "$missing" ]; then
	err "refusing to start: missing $missing"
	exit 64
fi
if [ $# -eq 0 ]; then
	err "no command given (e.g. 'prefect worker start --pool cpu' or 'ogpo --help')"
	exit 64
fi
exec "$@"
