# shellcheck shell=bash
# Start the real object-store emulators that ferry's storage tests run against:
# Azurite (Azure Blob Storage) and moto (S3). Source it, don't execute it:
#
#     source .ci/object-stores.sh      # starts (or reuses) both, exports the variables below
#     cargo nextest run -p ferry-storage
#     stop_object_stores               # kills both and removes their data
#
# Idempotent: sourcing it again reuses emulators that are still running.
# Exports FERRY_TEST_AZURE_URL, FERRY_TEST_S3_URL and the variables object_store's builders read
# (AZURE_STORAGE_*, AZURITE_BLOB_STORAGE_URL, AWS_*). Containers/buckets created: `ferry-test`
# plus any names listed (space-separated) in FERRY_TEST_CONTAINERS.
# Functions: stop_object_stores, stop_azurite, start_azurite (outage tests stop and restart
# Azurite on the same port with the same data).
#
# The Azurite account name and key below are the emulator's public, well-known credentials.

FERRY_OS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FERRY_OS_STATE="${TMPDIR:-/tmp}/ferry-object-stores-$(printf %s "$FERRY_OS_ROOT" | cksum | cut -d' ' -f1)"
FERRY_OS_AZURITE_VERSION=3.35.0
FERRY_OS_AZURITE_BIN="$FERRY_OS_ROOT/.ci/node/node_modules/.bin/azurite-blob"
FERRY_OS_ACCOUNT=devstoreaccount1
FERRY_OS_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

_ferry_os_log() { echo "object-stores: $*" >&2; }

# A free TCP port on 127.0.0.1, preferring $1 when it is free.
_ferry_os_free_port() {
    python3 - "$1" <<'EOF'
import socket, sys
def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]
    except OSError:
        return None
    finally:
        s.close()
print(free(int(sys.argv[1])) or free(0))
EOF
}

_ferry_os_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Wait (up to 60 s) until http://127.0.0.1:$1/ answers with any HTTP status.
_ferry_os_wait() {
    local port=$1 pid=$2 name=$3 deadline=$((SECONDS + 60)) code
    while [ "$SECONDS" -lt "$deadline" ]; do
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$port/" || true)
        if [ -n "$code" ] && [ "$code" != 000 ]; then return 0; fi
        if ! _ferry_os_alive "$pid"; then
            _ferry_os_log "$name exited; log: $FERRY_OS_STATE/$name.log"
            tail -n 20 "$FERRY_OS_STATE/$name.log" >&2
            return 1
        fi
        sleep 0.2
    done
    _ferry_os_log "$name did not answer on port $port within 60 s; log: $FERRY_OS_STATE/$name.log"
    return 1
}

_ferry_os_need_curl() {
    command -v curl >/dev/null && return 0
    _ferry_os_log "installing curl"
    { apt-get update -qq && apt-get install -y -qq curl; } >/dev/null 2>&1 || {
        _ferry_os_log "could not install curl"
        return 1
    }
}

# Create one container with a Shared-Key-signed request; 201 (created) and 409 (exists) are fine.
_ferry_os_create_container() {
    python3 "$FERRY_OS_ROOT/.ci/azurite-container.py" "$1" "$2" "$FERRY_OS_ACCOUNT" "$FERRY_OS_KEY"
}

_ferry_os_containers() { echo "ferry-test ${FERRY_TEST_CONTAINERS:-}"; }

# Start Azurite on the recorded port (or 10000, or a free one), with data in the state dir.
start_azurite() {
    mkdir -p "$FERRY_OS_STATE/azurite-data"
    local pid port
    pid=$(cat "$FERRY_OS_STATE/azurite.pid" 2>/dev/null)
    port=$(cat "$FERRY_OS_STATE/azurite.port" 2>/dev/null)
    if _ferry_os_alive "$pid" && [ -n "$port" ]; then
        FERRY_OS_AZURITE_PORT=$port
        return 0
    fi
    if [ ! -x "$FERRY_OS_AZURITE_BIN" ]; then
        _ferry_os_log "installing azurite@$FERRY_OS_AZURITE_VERSION into .ci/node"
        npm install --no-save --no-audit --no-fund --prefix "$FERRY_OS_ROOT/.ci/node" \
            "azurite@$FERRY_OS_AZURITE_VERSION" >"$FERRY_OS_STATE/npm.log" 2>&1 || {
            _ferry_os_log "npm install failed; log: $FERRY_OS_STATE/npm.log"
            return 1
        }
    fi
    [ -n "$port" ] || port=$(_ferry_os_free_port 10000)
    "$FERRY_OS_AZURITE_BIN" --blobHost 127.0.0.1 --blobPort "$port" \
        --location "$FERRY_OS_STATE/azurite-data" --disableTelemetry --skipApiVersionCheck \
        --loose --silent >"$FERRY_OS_STATE/azurite.log" 2>&1 </dev/null &
    pid=$!
    disown "$pid" 2>/dev/null || true
    echo "$pid" >"$FERRY_OS_STATE/azurite.pid"
    echo "$port" >"$FERRY_OS_STATE/azurite.port"
    _ferry_os_wait "$port" "$pid" azurite || return 1
    FERRY_OS_AZURITE_PORT=$port
    echo "object-stores: azurite $FERRY_OS_AZURITE_VERSION on 127.0.0.1:$port (pid $pid)"
}

# Stop Azurite, keeping its port and data so start_azurite brings the same account back.
stop_azurite() {
    local pid
    pid=$(cat "$FERRY_OS_STATE/azurite.pid" 2>/dev/null)
    if _ferry_os_alive "$pid"; then
        kill "$pid" 2>/dev/null
        local deadline=$((SECONDS + 10))
        while _ferry_os_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        _ferry_os_alive "$pid" && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$FERRY_OS_STATE/azurite.pid"
}

_ferry_os_start_moto() {
    local pid port
    pid=$(cat "$FERRY_OS_STATE/moto.pid" 2>/dev/null)
    port=$(cat "$FERRY_OS_STATE/moto.port" 2>/dev/null)
    if _ferry_os_alive "$pid" && [ -n "$port" ]; then
        FERRY_OS_MOTO_PORT=$port
        return 0
    fi
    if ! command -v moto_server >/dev/null; then
        _ferry_os_log "installing moto[server] with pip"
        pip install -q 'moto[server]' >"$FERRY_OS_STATE/pip.log" 2>&1 || {
            _ferry_os_log "pip install failed; log: $FERRY_OS_STATE/pip.log"
            return 1
        }
        hash -r
    fi
    [ -n "$port" ] || port=$(_ferry_os_free_port 5000)
    moto_server -H 127.0.0.1 -p "$port" >"$FERRY_OS_STATE/moto.log" 2>&1 </dev/null &
    pid=$!
    disown "$pid" 2>/dev/null || true
    echo "$pid" >"$FERRY_OS_STATE/moto.pid"
    echo "$port" >"$FERRY_OS_STATE/moto.port"
    _ferry_os_wait "$port" "$pid" moto || return 1
    FERRY_OS_MOTO_PORT=$port
    echo "object-stores: moto (S3) on 127.0.0.1:$port (pid $pid)"
}

# Kill both emulators and remove their data.
stop_object_stores() {
    stop_azurite
    local pid
    pid=$(cat "$FERRY_OS_STATE/moto.pid" 2>/dev/null)
    _ferry_os_alive "$pid" && kill "$pid" 2>/dev/null
    rm -rf "$FERRY_OS_STATE"
    echo "object-stores: stopped"
}

_ferry_os_start() {
    mkdir -p "$FERRY_OS_STATE"
    _ferry_os_need_curl || return 1
    start_azurite || return 1
    _ferry_os_start_moto || return 1
    local c code
    for c in $(_ferry_os_containers); do
        _ferry_os_create_container "$FERRY_OS_AZURITE_PORT" "$c" || return 1
        code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$FERRY_OS_MOTO_PORT/$c")
        case $code in
        200 | 409) ;;
        *)
            _ferry_os_log "creating bucket $c: HTTP $code"
            return 1
            ;;
        esac
    done
    export FERRY_TEST_AZURE_URL=az://ferry-test
    export FERRY_TEST_S3_URL=s3://ferry-test
    export AZURE_STORAGE_USE_EMULATOR=true
    export AZURE_STORAGE_ACCOUNT_NAME=$FERRY_OS_ACCOUNT
    export AZURE_STORAGE_ACCOUNT_KEY=$FERRY_OS_KEY
    export AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$FERRY_OS_AZURITE_PORT
    # Tests that stop and restart a store of their own (outages) start this binary.
    export FERRY_TEST_AZURITE_BIN=$FERRY_OS_AZURITE_BIN
    export AWS_ENDPOINT=http://127.0.0.1:$FERRY_OS_MOTO_PORT
    export AWS_ALLOW_HTTP=true
    export AWS_ACCESS_KEY_ID=test
    export AWS_SECRET_ACCESS_KEY=test
    export AWS_REGION=us-east-1
}

if ! _ferry_os_start; then
    _ferry_os_log "FAILED to start the object-store emulators"
    return 1 2>/dev/null || exit 1
fi
