# shellcheck shell=bash disable=SC2034  # (variables used by the scripts sourcing this file)
# Shared by start_cluster.sh and stop_cluster.sh (sourced, not run): where the single-host
# SLURM cluster keeps its state, logs and pid files, and which daemons it runs.

SLURM_DIR="${ROADMAP_SLURM_DIR:-/tmp/convnext-roadmap-slurm}"
SLURM_DIR=$(realpath -m "$SLURM_DIR")
LOG_DIR="$SLURM_DIR/log"
RUN_DIR="$SLURM_DIR/run"
STATE_DIR="$SLURM_DIR/state"
export PATH="$PATH:/usr/sbin:/sbin"

# Daemons in start order: "name pid_file log_file" (name is also the process's /proc/PID/comm).
DAEMONS=(
    "munged    $RUN_DIR/munge/munged.pid    $LOG_DIR/munged.log"
    "mariadbd  $RUN_DIR/mysql/mariadbd.pid  $LOG_DIR/mariadb.log"
    "slurmdbd  $RUN_DIR/slurmdbd.pid        $LOG_DIR/slurmdbd.log"
    "slurmctld $RUN_DIR/slurmctld.pid       $LOG_DIR/slurmctld.log"
    "slurmd    $RUN_DIR/slurmd.pid          $LOG_DIR/slurmd.log"
)

# daemon_pid PID_FILE NAME: print the pid in PID_FILE if that process is alive and is NAME
# and not a zombie (so that a pid reused by an unrelated process is never taken for ours).
daemon_pid() {
    local pid_file=$1 name=$2 pid comm
    [[ -r $pid_file ]] || return 1
    read -r pid < "$pid_file" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]] || return 1
    # a zombie (exited, not yet reaped by its parent) is not running
    if grep -qE '^State:[[:space:]]+[ZX]' "/proc/$pid/status" 2>/dev/null; then return 1; fi
    echo "$pid"
}
