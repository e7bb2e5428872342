# shellcheck shell=bash
# Start a throwaway PostgreSQL cluster for ferry's tests: the state layer's tests run on it as
# well as on SQLite, and the end-to-end tests' servers keep their state in it. Source it, don't
# execute it:
#
#     source .ci/postgres.sh      # starts (or reuses) the cluster, exports the variable below
#     cargo nextest run -p ferry-control
#     stop_postgres               # stops it and removes its data
#
# Exports FERRY_TEST_POSTGRES_URL, the cluster's superuser on loopback (trust authentication:
# the cluster is private to this machine's tests and lives only as long as they run). Each test
# makes a database of its own on it.

FERRY_PG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FERRY_PG_STATE="${TMPDIR:-/tmp}/ferry-postgres-$(printf %s "$FERRY_PG_ROOT" | cksum | cut -d' ' -f1)"

_ferry_pg_log() { echo "postgres: $*" >&2; }

# The directory of initdb and pg_ctl: PATH, else the newest /usr/lib/postgresql/N/bin.
_ferry_pg_bin() {
    local initdb
    initdb=$(command -v initdb 2>/dev/null || true)
    if [ -z "$initdb" ]; then
        initdb=$(find /usr/lib/postgresql -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
    fi
    [ -n "$initdb" ] && dirname "$(readlink -f "$initdb")"
}

_ferry_pg_start() {
    local bin port user run
    bin=$(_ferry_pg_bin) || true
    if [ -z "$bin" ]; then
        _ferry_pg_log "no initdb found: scripts/install-test-tools installs PostgreSQL"
        return 1
    fi
    mkdir -p "$FERRY_PG_STATE"
    port=$(cat "$FERRY_PG_STATE/port" 2>/dev/null || true)
    run=()
    user=$(id -un)
    # PostgreSQL refuses to run as root: the cluster then belongs to the postgres user.
    if [ "$(id -u)" = 0 ]; then
        user=postgres
        id postgres >/dev/null 2>&1 || useradd --system --home-dir "$FERRY_PG_STATE" postgres
        chown postgres: "$FERRY_PG_STATE"
        run=(runuser -u postgres --)
    fi
    if [ -n "$port" ] && "${run[@]}" "$bin/pg_ctl" -D "$FERRY_PG_STATE/data" status >/dev/null 2>&1; then
        FERRY_PG_PORT=$port
        return 0
    fi
    if [ ! -f "$FERRY_PG_STATE/data/PG_VERSION" ]; then
        "${run[@]}" "$bin/initdb" -D "$FERRY_PG_STATE/data" --auth=trust -U postgres --no-sync \
            >"$FERRY_PG_STATE/initdb.log" 2>&1 || {
            _ferry_pg_log "initdb failed; log: $FERRY_PG_STATE/initdb.log"
            return 1
        }
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${run[@]}" "$bin/pg_ctl" -D "$FERRY_PG_STATE/data" -w -t 60 -l "$FERRY_PG_STATE/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $FERRY_PG_STATE -c fsync=off -c max_connections=300" \
        start >/dev/null || {
        _ferry_pg_log "the server did not start; log: $FERRY_PG_STATE/server.log"
        tail -n 20 "$FERRY_PG_STATE/server.log" >&2
        return 1
    }
    echo "$port" >"$FERRY_PG_STATE/port"
    FERRY_PG_PORT=$port
    echo "postgres: $("$bin/postgres" --version) on 127.0.0.1:$port ($user)"
}

# Stop the cluster and remove its data.
stop_postgres() {
    local bin run=()
    bin=$(_ferry_pg_bin) || true
    [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    if [ -n "$bin" ] && [ -d "$FERRY_PG_STATE/data" ]; then
        "${run[@]}" "$bin/pg_ctl" -D "$FERRY_PG_STATE/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$FERRY_PG_STATE"
    echo "postgres: stopped"
}

if _ferry_pg_start; then
    export FERRY_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$FERRY_PG_PORT/postgres"
else
    _ferry_pg_log "FAILED to start PostgreSQL"
    return 1 2>/dev/null || exit 1
fi
