#!/bin/sh
# Entry point of the otrain-postgres image (docker/Dockerfile.postgres), run as 'postgres' (uid 999).
#
# The data volume is mounted on /var/lib/postgresql/data; the cluster lives in its folder
# pgdata/. On the first start (no pgdata/ yet) a cluster is made in pgdata.new/ with the role
# POSTGRES_USER (password POSTGRES_PASSWORD) and the database POSTGRES_DB, then renamed to
# pgdata/: an interrupted initialisation leaves no cluster that looks complete, and the next
# start makes it again. Then PostgreSQL runs in the foreground on every address of the
# container. Over TCP every role needs its password (SCRAM); the socket inside the container
# trusts local processes (pg_isready, an admin's `docker exec ... psql`).
set -eu

volume=/var/lib/postgresql/data
cluster=$volume/pgdata
die() { echo "otrain-postgres: $*" >&2; exit 1; }

if [ -e "$volume/PG_VERSION" ]; then
    die "the volume holds a PostgreSQL $(cat "$volume/PG_VERSION") cluster of another image at its root;" \
        "this image keeps its cluster in pgdata/: dump it with that image, restore it into a new volume"
fi
if [ ! -s "$cluster/PG_VERSION" ]; then
    for name in POSTGRES_USER POSTGRES_PASSWORD POSTGRES_DB; do
        eval "value=\${$name:-}"
        [ -n "$value" ] || die "$name is not set (docker/otrain.env holds it)"
    done
    [ ! -e "$cluster" ] || die "$cluster exists but holds no cluster (no PG_VERSION): move it away"
    fresh=$volume/pgdata.new
    rm -rf "$fresh"
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
    initdb --pgdata="$fresh" --username="$POSTGRES_USER" --pwfile="$password_file" \
        --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >>"$fresh/pg_hba.conf"
    # The database is made by a server on a private socket and no TCP address, so that the
    # health check (pg_isready on the usual socket) fails until the cluster is complete.
    socket=$(mktemp -d)
    pg_ctl --pgdata="$fresh" --options="-c listen_addresses='' -k $socket" --wait --silent start
    if [ "$POSTGRES_DB" != postgres ]; then
        createdb --host="$socket" --username="$POSTGRES_USER" -- "$POSTGRES_DB"
    fi
    pg_ctl --pgdata="$fresh" --mode=fast --wait --silent stop
    rmdir "$socket"
    mv "$fresh" "$cluster"
    echo "otrain-postgres: made the cluster in $cluster (role $POSTGRES_USER, database $POSTGRES_DB)" >&2
fi
exec postgres -D "$cluster" -c listen_addresses='*' "$@"
