#!/usr/bin/env bash
# Run Docker Compose with the given arguments: Compose v2 (`docker compose`) when the Docker CLI
# has it, otherwise v1 (`docker-compose`, Debian bookworm's 1.29), installed when missing.
#
# usage: docker/compose.sh ARGS...        e.g. docker/compose.sh -f docker/compose.yaml up -d mlflow
#        docker/compose.sh --which        prints the command it would run, runs nothing
#
# Installing Debian's docker-compose needs root and OTRAIN_INSTALL_SYSTEM_PACKAGES=1 (.ci/run
# sets it); otherwise a missing Compose exits with status 3 and says what to run.
set -euo pipefail

log() { echo "compose: $*" >&2; }

if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif [ "$(id -u)" = 0 ] && [ "${OTRAIN_INSTALL_SYSTEM_PACKAGES:-0}" = 1 ]; then
    log "installing Debian's docker-compose"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    compose=(docker-compose)
else
    log "neither \`docker compose\` nor docker-compose is installed: install one (apt-get install" \
        "docker-compose), or run OTRAIN_INSTALL_SYSTEM_PACKAGES=1 make docker-test as root to let otrain install it"
    exit 3
fi

if [ "${1:-}" = --which ]; then
    echo "${compose[*]}"
    exit 0
fi
exec "${compose[@]}" "$@"
