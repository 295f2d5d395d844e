#!/usr/bin/env bash
# start_server.sh [--basic-auth]: the recommended tracking server for many writers, on this host.
#
# Starts PostgreSQL (Debian's package; installed with apt when missing and run as root) with its own data
# folder, port and pid file, no systemd, and `mlflow server` on it, then prints the tracking URI as its
# LAST line, so that `URI=$(bash tools/mlflow/start_server.sh | tail -n 1)` works. Everything lives
# under ONE folder,
#   ${ROADMAP_MLFLOW_DIR:-/tmp/convnext-roadmap-mlflow}
#     postgres/   PostgreSQL's data folder           artifacts/  the server's --artifacts-destination
#     log/        postgres.log mlflow.log (read these on failure)
#     run/        postgres.pid mlflow.pid, run/pg/ PostgreSQL's unix socket
#     secrets/    generated passwords (mode 0600): the database's, basic-auth's admin and Flask key
# Other env: ROADMAP_MLFLOW_HOST (default 127.0.0.1; 0.0.0.0 serves other machines, which may then call it by
#   this host's name or a private IP; ROADMAP_MLFLOW_ALLOWED_HOSTS replaces that list: MLflow's --allowed-hosts),
#   ROADMAP_MLFLOW_PORT (default 5055), ROADMAP_MLFLOW_PG_PORT (PostgreSQL on 127.0.0.1, default 5433),
#   ROADMAP_MLFLOW_WORKERS (default 2), ROADMAP_MLFLOW_TIMEOUT (s to wait for each daemon, default 180),
#   ROADMAP_MLFLOW_PYTHON (the interpreter with mlflow and psycopg 3: `pip install "convnext-roadmap[server]"`;
#   default the `python` on PATH).
#
# --basic-auth runs MLflow's `--app-name basic-auth`: every request needs a user name and password (clients
# give them as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD). Its users live in a second database of the
# same PostgreSQL. The admin user `admin` is created on the first start with MLFLOW_AUTH_ADMIN_PASSWORD, or a
# generated password kept in secrets/admin_password. New users get READ on others' experiments.
#
# Run again while the server runs: nothing is started twice; a daemon that died is started again (PostgreSQL
# first). The database survives a stop and start; `stop_server.sh --purge` deletes the folder.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$HERE/_common.sh"

HOST="${ROADMAP_MLFLOW_HOST:-127.0.0.1}"
PORT="${ROADMAP_MLFLOW_PORT:-5055}"
PG_PORT="${ROADMAP_MLFLOW_PG_PORT:-5433}"
WORKERS="${ROADMAP_MLFLOW_WORKERS:-2}"
TIMEOUT="${ROADMAP_MLFLOW_TIMEOUT:-180}"
PYTHON="${ROADMAP_MLFLOW_PYTHON:-$(command -v python || command -v python3 || true)}"
AUTH=0
case "${1:-}" in
    "") ;;
    --basic-auth) AUTH=1 ;;
    *) echo "usage: $0 [--basic-auth]" >&2; exit 2 ;;
esac
DB_USER=mlflow
T0=$SECONDS

say() { echo "start_server: [+$((SECONDS - T0))s] $*" >&2; }
die() { echo "start_server: ERROR: $*" >&2; exit 1; }
fail() {
    echo "start_server: last lines of $1:" >&2
    tail -n 20 "$1" >&2 2> /dev/null || true
    die "$2; read $1"
}

# The URI clients use: a server bound to every interface is reached by this host's name.
connect_host=$HOST
[[ $HOST == 0.0.0.0 ]] && connect_host=$(hostname -f 2> /dev/null || hostname)
URI="http://$connect_host:$PORT"
local_host=$HOST   # where this script checks /health
[[ $HOST == 0.0.0.0 ]] && local_host=127.0.0.1
# MLflow 3 refuses requests whose Host header is not loopback or a private IP (DNS-rebinding protection):
# a server for other machines must also accept its own name.
allowed_args=()
if [[ $HOST != 127.0.0.1 && $HOST != localhost ]]; then
    short=$(hostname -s 2> /dev/null || hostname)
    default_allowed="$connect_host,$connect_host:*,$short,$short:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*,10.*,172.*,192.168.*"
    allowed_args=(--allowed-hosts "${ROADMAP_MLFLOW_ALLOWED_HOSTS:-$default_allowed}")
fi

[[ -n $PYTHON ]] || die "no python on PATH; set ROADMAP_MLFLOW_PYTHON to the interpreter that has mlflow"
"$PYTHON" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("mlflow") and u.find_spec("psycopg")))' ||
    die "$PYTHON cannot import mlflow and psycopg (PostgreSQL driver); pip install \"convnext-roadmap[server]\" (or set ROADMAP_MLFLOW_PYTHON)"

if ((AUTH)); then
    "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("flask_wtf"))' ||
        die "$PYTHON cannot import flask_wtf, which MLflow's basic-auth needs; pip install \"convnext-roadmap[server]\""
fi

# healthy: the server answers /health (unprotected under basic-auth too).
healthy() {
    "$PYTHON" -c 'import sys, urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1] + "/health", timeout=3).status != 200)' "http://$local_host:$PORT" \
        > /dev/null 2>&1
}

# --- Already running? ---------------------------------------------------------------------------------
mode_file="$RUN_DIR/mlflow.mode"
if mlflow_pid=$(alive_pid "$MLFLOW_PID" "$MLFLOW_PATTERN"); then
    running_mode=$(cat "$mode_file" 2> /dev/null || echo "?")
    [[ $running_mode == "auth=$AUTH port=$PORT" ]] ||
        die "an mlflow server ($running_mode, pid $mlflow_pid) already runs from $MLFLOW_DIR; stop it first (stop_server.sh)"
fi

# --- PostgreSQL ---------------------------------------------------------------------------------------
PG_BIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2> /dev/null | sort -V | tail -n 1 || true)
if [[ -z $PG_BIN ]]; then
    [[ $(id -u) == 0 ]] || die "PostgreSQL is not installed; as root: apt-get install postgresql"
    say "installing postgresql (Debian's package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql > /dev/null
    PG_BIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
fi
# PostgreSQL refuses to run as root: root runs it as the `postgres` user, anyone else as themselves.
if [[ $(id -u) == 0 ]]; then
    PG_OWNER=postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    PG_OWNER=$(id -un)
    as_pg() { "$@"; }
fi

install -d -m 0755 "$MLFLOW_DIR" "$LOG_DIR" "$RUN_DIR" "$ARTIFACTS"
as_pg test -x "$MLFLOW_DIR" ||
    die "user $PG_OWNER cannot reach $MLFLOW_DIR (a folder above it is private); set ROADMAP_MLFLOW_DIR to a folder under one others may enter, such as /tmp or /srv"
install -d -m 0700 "$MLFLOW_DIR/secrets"
install -d -m 0700 -o "$PG_OWNER" "$PG_DATA" "$RUN_DIR/pg"
touch "$LOG_DIR/postgres.log" "$LOG_DIR/mlflow.log"
chown "$PG_OWNER" "$LOG_DIR/postgres.log"

# secret NAME: the contents of secrets/NAME, generated (32 hex digits) on first use.
secret() {
    local file="$MLFLOW_DIR/secrets/$1"
    [[ -s $file ]] || (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(16))' > "$file")
    cat "$file"
}
DB_PASSWORD=$(secret db_password)
# libpq reads the password from this file, so that no secret appears on a command line.
(umask 077 && echo "127.0.0.1:$PG_PORT:*:$DB_USER:$DB_PASSWORD" > "$MLFLOW_DIR/secrets/pgpass")
export PGPASSFILE="$MLFLOW_DIR/secrets/pgpass"

if [[ ! -s $PG_DATA/PG_VERSION ]]; then
    say "initialising PostgreSQL data folder $PG_DATA"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" --auth-local=peer --auth-host=scram-sha-256 -E UTF8 \
        >> "$LOG_DIR/postgres.log" 2>&1 || fail "$LOG_DIR/postgres.log" "initdb failed"
fi
if pg_pid=$(alive_pid "$PG_PID" "$PG_PATTERN"); then
    say "PostgreSQL already running, pid $pg_pid"
else
    rm -f "$PG_PID"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$LOG_DIR/postgres.log" -w -t "$TIMEOUT" start \
        -o "-p $PG_PORT -k $RUN_DIR/pg -c listen_addresses=127.0.0.1" > /dev/null ||
        fail "$LOG_DIR/postgres.log" "PostgreSQL failed to start"
    head -n 1 "$PG_DATA/postmaster.pid" > "$PG_PID"
    pg_pid=$(alive_pid "$PG_PID" "$PG_PATTERN") || fail "$LOG_DIR/postgres.log" "PostgreSQL is not running"
    say "PostgreSQL running, pid $pg_pid, port $PG_PORT"
fi

sql() { as_pg "$PG_BIN/psql" -h "$RUN_DIR/pg" -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [[ -z $(sql -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'") ]]; then
    sql -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD'" > /dev/null
fi
for database in mlflow mlflow_auth; do
    if [[ -z $(sql -c "SELECT 1 FROM pg_database WHERE datname = '$database'") ]]; then
        sql -c "CREATE DATABASE $database OWNER $DB_USER" > /dev/null
        say "created database $database"
    fi
done

# --- mlflow server ------------------------------------------------------------------------------------
if mlflow_pid=$(alive_pid "$MLFLOW_PID" "$MLFLOW_PATTERN"); then
    say "mlflow server already running, pid $mlflow_pid"
else
    auth_args=()
    if ((AUTH)); then
        cat > "$MLFLOW_DIR/basic_auth.ini" <<EOF
# Written by convnext-roadmap tools/mlflow/start_server.sh --basic-auth.
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg://$DB_USER@127.0.0.1:$PG_PORT/mlflow_auth
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A study sends thousands of requests; without this cache each one pays a PBKDF2 hash of the password. A
# changed password or a deleted user may still be accepted for up to this many seconds by other workers.
auth_cache_ttl_seconds = 60
EOF
        export MLFLOW_AUTH_CONFIG_PATH="$MLFLOW_DIR/basic_auth.ini"
        export MLFLOW_AUTH_ADMIN_PASSWORD="${MLFLOW_AUTH_ADMIN_PASSWORD:-$(secret admin_password)}"
        MLFLOW_FLASK_SERVER_SECRET_KEY=$(secret flask_secret_key)
        export MLFLOW_FLASK_SERVER_SECRET_KEY
        auth_args=(--app-name basic-auth)
    fi
    # MLflow's job runner (GenAI scorers and trace archival; 8 more processes) is not needed here.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
    rm -f "$MLFLOW_PID"
    # Its own session, so that stop_server.sh stops the server and its workers as one group. uvicorn kills a
    # worker that does not answer its health check in 5 s, which a worker still importing MLflow on a busy
    # machine misses: the restarts made starts take 20-80 s on 2 cores.
    setsid "$PYTHON" -m mlflow server --backend-store-uri "postgresql+psycopg://$DB_USER@127.0.0.1:$PG_PORT/mlflow" \
        --host "$HOST" --port "$PORT" --workers "$WORKERS" "${auth_args[@]}" "${allowed_args[@]}" \
        --uvicorn-opts "--timeout-worker-healthcheck 60" \
        --artifacts-destination "$ARTIFACTS" < /dev/null >> "$LOG_DIR/mlflow.log" 2>&1 &
    echo $! > "$MLFLOW_PID"
    echo "auth=$AUTH port=$PORT" > "$mode_file"
    say "mlflow server starting, pid $(cat "$MLFLOW_PID"), port $PORT$( ((AUTH)) && echo ", basic-auth")"
fi
deadline=$((SECONDS + TIMEOUT))
until healthy; do
    alive_pid "$MLFLOW_PID" "$MLFLOW_PATTERN" > /dev/null || fail "$LOG_DIR/mlflow.log" "mlflow server exited"
    ((SECONDS < deadline)) || fail "$LOG_DIR/mlflow.log" "mlflow server did not answer /health in ${TIMEOUT}s"
    sleep 0.5
done
((AUTH)) && say "basic-auth: admin user 'admin', password in $MLFLOW_DIR/secrets/admin_password (unless given)"
say "ready in $((SECONDS - T0))s; logs in $LOG_DIR"
echo "$URI"
