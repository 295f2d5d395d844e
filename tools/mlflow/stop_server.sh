#!/usr/bin/env bash
# stop_server.sh [--purge] [mlflow|postgres ...]: stop what start_server.sh started.
#
# Stops exactly the processes named in the pid files under
#   ${ROADMAP_MLFLOW_DIR:-/tmp/convnext-roadmap-mlflow}/run
# the mlflow server first (its session: the server and its workers), then PostgreSQL (pg_ctl's fast
# shutdown). A pid is only signalled while its command line still names this folder; SIGTERM, wait up to
# ROADMAP_MLFLOW_STOP_TIMEOUT seconds (default 20), then SIGKILL. Never pkill/killall/systemctl.
# Naming `mlflow` or `postgres` stops only that one (the tests restart one at a time). Exits 0 when
# nothing runs. `--purge` also deletes the whole folder (database, artifacts, logs, secrets).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$HERE/_common.sh"

GRACE="${ROADMAP_MLFLOW_STOP_TIMEOUT:-20}"
PURGE=0
STOP_MLFLOW=0
STOP_POSTGRES=0
for arg in "$@"; do
    case $arg in
        --purge) PURGE=1 ;;
        mlflow) STOP_MLFLOW=1 ;;
        postgres) STOP_POSTGRES=1 ;;
        *) echo "usage: $0 [--purge] [mlflow|postgres ...]" >&2; exit 2 ;;
    esac
done
if ((!STOP_MLFLOW && !STOP_POSTGRES)) || ((PURGE)); then STOP_MLFLOW=1; STOP_POSTGRES=1; fi

say() { echo "stop_server: $*"; }

# wait_gone PID_FILE PATTERN SECONDS: wait until that process is gone; 1 if still alive after SECONDS.
wait_gone() {
    local deadline=$((SECONDS + $3))
    while alive_pid "$1" "$2" > /dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

stopped=0
if ((STOP_MLFLOW)); then
    if pid=$(alive_pid "$MLFLOW_PID" "$MLFLOW_PATTERN"); then
        # start_server.sh made it a session (and group) leader: its uvicorn workers are in its group.
        kill -TERM -- "-$pid" 2> /dev/null || kill -TERM "$pid" 2> /dev/null || true
        if ! wait_gone "$MLFLOW_PID" "$MLFLOW_PATTERN" "$GRACE"; then
            say "mlflow server (pid $pid) still alive after ${GRACE}s: SIGKILL"
            kill -KILL -- "-$pid" 2> /dev/null || true
            wait_gone "$MLFLOW_PID" "$MLFLOW_PATTERN" 5 || say "WARNING: mlflow server (pid $pid) survived SIGKILL"
        fi
        # Workers that outlive their parent keep the group id: end them too (the group is ours).
        kill -KILL -- "-$pid" 2> /dev/null || true
        say "stopped mlflow server (pid $pid)"
        stopped=$((stopped + 1))
    fi
    rm -f "$MLFLOW_PID" "$RUN_DIR/mlflow.mode"
fi

if ((STOP_POSTGRES)); then
    if pid=$(alive_pid "$PG_PID" "$PG_PATTERN"); then
        # SIGINT is PostgreSQL's fast shutdown (what `pg_ctl stop -m fast` sends): sessions are ended and
        # the data is consistent; the next start needs no recovery.
        kill -INT "$pid" 2> /dev/null || true
        if ! wait_gone "$PG_PID" "$PG_PATTERN" "$GRACE"; then
            say "PostgreSQL (pid $pid) still alive after ${GRACE}s: immediate shutdown (SIGQUIT)"
            kill -QUIT "$pid" 2> /dev/null || true
            wait_gone "$PG_PID" "$PG_PATTERN" 10 || say "WARNING: PostgreSQL (pid $pid) did not stop"
        fi
        say "stopped PostgreSQL (pid $pid)"
        stopped=$((stopped + 1))
    fi
    rm -f "$PG_PID"
fi
((stopped)) || say "nothing was running (pid files under $RUN_DIR)"

if ((PURGE)) && [[ -d $MLFLOW_DIR && $MLFLOW_DIR != / ]]; then
    rm -rf -- "$MLFLOW_DIR"
    say "deleted $MLFLOW_DIR"
fi
exit 0
