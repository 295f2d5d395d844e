#!/usr/bin/env bash
# stop_cluster.sh: stop the single-host SLURM cluster that start_cluster.sh started.
#
# Cancels the cluster's jobs (so no slurmstepd or job process outlives slurmd), then stops
# exactly the processes named in the pid files under
#   ${ROADMAP_SLURM_DIR:-/tmp/convnext-roadmap-slurm}/run
# in reverse start order (slurmd, slurmctld, slurmdbd, mariadbd, munged): SIGTERM, wait up to
# ROADMAP_SLURM_STOP_TIMEOUT seconds (default 20), then SIGKILL. A pid is only signalled while
# /proc/PID/comm still names the daemon. Never pkill/killall/systemctl. Pid files are removed.
# Exits 0 when nothing runs. `--purge` also deletes the whole state folder (DB, state, logs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$HERE/_common.sh"

GRACE="${ROADMAP_SLURM_STOP_TIMEOUT:-20}"
PURGE=0
case "${1:-}" in
    "") ;;
    --purge) PURGE=1 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

say() { echo "stop_cluster: $*"; }

# wait_gone PID_FILE NAME SECONDS: wait until that daemon is gone; 1 if still alive after SECONDS.
wait_gone() {
    local deadline=$((SECONDS + $3))
    while daemon_pid "$1" "$2" > /dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# 1. Cancel every job while slurmctld still runs, and give them KillWait to end.
if daemon_pid "$RUN_DIR/slurmctld.pid" slurmctld > /dev/null; then
    mapfile -t jobs < <(squeue -h -o %F 2> /dev/null | sort -u)
    if ((${#jobs[@]})); then
        say "cancelling ${#jobs[@]} job(s): ${jobs[*]}"
        scancel "${jobs[@]}" || true
        deadline=$((SECONDS + GRACE))
        while [[ -n $(squeue -h -o %A 2> /dev/null) ]] && ((SECONDS < deadline)); do sleep 0.5; done
    fi
fi

# 2. Stop the daemons, last started first.
stopped=0
for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    read -r name pid_file _ <<< "${DAEMONS[i]}"
    if pid=$(daemon_pid "$pid_file" "$name"); then
        kill -TERM "$pid" 2> /dev/null || true
        if ! wait_gone "$pid_file" "$name" "$GRACE"; then
            say "$name (pid $pid) still alive after ${GRACE}s: SIGKILL"
            kill -KILL "$pid" 2> /dev/null || true
            wait_gone "$pid_file" "$name" 5 || say "WARNING: $name (pid $pid) survived SIGKILL"
        fi
        say "stopped $name (pid $pid)"
        stopped=$((stopped + 1))
    fi
    rm -f "$pid_file"
done
((stopped)) || say "nothing was running (pid files under $RUN_DIR)"

# Job steps outliving slurmd would hold CPUs of the next cluster: name them, kill nothing blindly.
for comm_file in /proc/[0-9]*/comm; do
    if [[ $(cat "$comm_file" 2> /dev/null) == slurmstepd ]]; then
        pid=${comm_file#/proc/}
        say "WARNING: slurmstepd pid ${pid%/comm} still runs (a job step that did not end)"
    fi
done

if ((PURGE)) && [[ -d $SLURM_DIR && $SLURM_DIR != / ]]; then
    rm -rf -- "$SLURM_DIR"
    say "deleted $SLURM_DIR"
fi
exit 0
