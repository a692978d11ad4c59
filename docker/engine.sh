#!/usr/bin/env bash
# A Docker engine for the container tests and builds: reuse one that runs, otherwise start
# Debian's docker.io with its own data root and socket (installed when missing, as root).
#
# usage: docker/engine.sh start    prints the DOCKER_HOST to use; "started" or "reused" on stderr
#        docker/engine.sh stop     stops the engine that `start` started (nothing else)
#
# OTRAIN_DOCKER_ROOT (default /var/tmp/otrain-docker) holds its data root, socket, pid file and
# log; the data root is kept between runs as a layer cache. The engine creates no default bridge
# and touches no iptables rules: builds use --network host, `docker run` --network none or host.
# User-defined bridges still work without iptables (checked with tests/containers/test_compose.py): the
# compose stack's default network joins its containers, which reach each other by name, and its
# published ports (127.0.0.1:PORT) go through Docker's userland proxy. Only the way out (NAT) is
# missing, which the stack does not need; hence no change to --bridge or --iptables here.
# OTRAIN_DOCKER_GROUP (default docker) owns its socket, as Debian's engine does.
#
# Installing Debian's docker.io needs root and OTRAIN_INSTALL_SYSTEM_PACKAGES=1 (.ci/run sets
# it); otherwise a missing engine exits with status 3 and says what to run.
set -euo pipefail

root=${OTRAIN_DOCKER_ROOT:-/var/tmp/otrain-docker}
socket=$root/docker.sock
pidfile=$root/dockerd.pid
log() { echo "engine: $*" >&2; }

engine_answers() { timeout 20 docker ${1:+--host "$1"} info >/dev/null 2>&1; }

start() {
    if [ -n "${DOCKER_HOST:-}" ] && engine_answers "$DOCKER_HOST"; then
        log "reused the engine at $DOCKER_HOST"; echo "$DOCKER_HOST"; return
    fi
    if engine_answers "unix:///var/run/docker.sock"; then
        log "reused the engine at /var/run/docker.sock"; echo "unix:///var/run/docker.sock"; return
    fi
    if engine_answers "unix://$socket"; then
        log "reused the engine at $socket"; echo "unix://$socket"; return
    fi
    if [ "$(id -u)" != 0 ]; then
        log "no Docker engine answers, and starting one needs root (or set DOCKER_HOST)"
        exit 3
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        if [ "${OTRAIN_INSTALL_SYSTEM_PACKAGES:-0}" != 1 ]; then
            log "no Docker engine answers and none is installed: install one (apt-get install docker.io), or run" \
                "OTRAIN_INSTALL_SYSTEM_PACKAGES=1 make docker-test as root to let otrain install Debian's docker.io"
            exit 3
        fi
        log "installing Debian's docker.io"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    fi
    mkdir -p "$root"
    chmod 755 "$root"
    rm -f "$socket"
    dockerd --data-root "$root/data" --exec-root "$root/exec" --pidfile "$pidfile" \
        --host "unix://$socket" --group "${OTRAIN_DOCKER_GROUP:-docker}" \
        --bridge none --iptables=false --ip-masq=false >"$root/dockerd.log" 2>&1 &
    for _ in $(seq 60); do
        if engine_answers "unix://$socket"; then
            log "started dockerd (log: $root/dockerd.log)"; echo "unix://$socket"; return
        fi
        sleep 1
    done
    log "dockerd did not answer within 60 s; see $root/dockerd.log"
    stop
    exit 1
}

stop() {
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped dockerd"; return 0; }
        sleep 1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    log "dockerd did not stop within 60 s; killed it"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
