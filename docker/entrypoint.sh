#!/bin/sh
# Entry point of the otrain images: runs the given command (default: bash).
# With `docker run --user UID:GID` (so that files written into a bind-mounted folder belong to
# the caller) the process has no home of its own: give it a writable one for the Keras,
# Matplotlib, DVC and MLflow caches.
set -e
if [ ! -w "${HOME:-/nonexistent}" ]; then
    HOME="/tmp/home-$(id -u)"
    export HOME
    mkdir -p "$HOME"
fi
: "${USER:=$(id -un 2>/dev/null || echo "uid$(id -u)")}"
export USER
exec "$@"
