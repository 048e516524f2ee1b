#!/bin/sh
# First start: initdb with the password from POSTGRES_PASSWORD and a database POSTGRES_DB; then run postgres
# on 127.0.0.1:$PGPORT (host networking; see packaging/compose/README.md).
set -eu
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pw=$(mktemp); printf '%s\n' "${POSTGRES_PASSWORD:?}" > "$pw"
    "$bin/initdb" -D "$PGDATA" -U "${POSTGRES_USER:-fedge}" --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 --locale=C.UTF-8 -E UTF8 >/dev/null
    rm -f "$pw"
    "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses='' -k /tmp" -w start >/dev/null
    "$bin/psql" -h /tmp -U "${POSTGRES_USER:-fedge}" -d postgres -c "CREATE DATABASE \"${POSTGRES_DB:-fedge}\"" >/dev/null
    "$bin/pg_ctl" -D "$PGDATA" -w stop >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses="${PGHOST_BIND:-127.0.0.1}" -p "$PGPORT" -k /tmp
