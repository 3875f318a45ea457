#!/bin/sh
# Initialise PGDATA on first start, then run the server in the foreground.
# POSTGRES_USER becomes the superuser (password POSTGRES_PASSWORD); connections from
# the compose network authenticate with scram-sha-256, the local socket is trusted.
set -eu
: "${POSTGRES_USER:=flashsale}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "postgres-entrypoint: initialised $PGDATA (superuser $POSTGRES_USER)"
fi
exec "$@"
