# shellcheck shell=bash disable=SC2034  # (variables used by the scripts sourcing this file)
# Shared by start_server.sh and stop_server.sh (sourced, not run): where the tracking server keeps its
# database, artifacts, logs and pid files, and how to tell that a pid still names the process we started.

MLFLOW_DIR="${ROADMAP_MLFLOW_DIR:-/tmp/convnext-roadmap-mlflow}"
MLFLOW_DIR=$(realpath -m "$MLFLOW_DIR")
LOG_DIR="$MLFLOW_DIR/log"
RUN_DIR="$MLFLOW_DIR/run"            # pid files; PostgreSQL's unix socket
PG_DATA="$MLFLOW_DIR/postgres"       # PostgreSQL's data folder (initdb)
ARTIFACTS="$MLFLOW_DIR/artifacts"    # --artifacts-destination: the server proxies every artifact into it
PG_PID="$RUN_DIR/postgres.pid"       # a copy of the first line of $PG_DATA/postmaster.pid
MLFLOW_PID="$RUN_DIR/mlflow.pid"     # the `mlflow server` process, leader of its own session
export PATH="$PATH:/usr/sbin:/sbin"

# alive_pid PID_FILE PATTERN: print the pid in PID_FILE if that process is alive, not a zombie, and its
# command line matches PATTERN (so that a pid reused by an unrelated process is never taken for ours).
alive_pid() {
    local pid_file=$1 pattern=$2 pid
    [[ -r $pid_file ]] || return 1
    read -r pid < "$pid_file" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    if grep -qE '^State:[[:space:]]+[ZX]' "/proc/$pid/status" 2> /dev/null; then return 1; fi
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qE -- "$pattern" || return 1
    echo "$pid"
}

# Command-line patterns of our two daemons: each names this folder.
PG_PATTERN="postgres -D \"?$PG_DATA\"? "
MLFLOW_PATTERN="mlflow server .*--artifacts-destination $ARTIFACTS( |$)"
