#!/usr/bin/env bash
# start_cluster.sh: start a real single-host SLURM cluster with accounting (slurmctld, slurmd,
# slurmdbd on MariaDB, munge) on Debian 12, as root, without systemd, for the tests and CI.
#
# It installs what is missing (apt), writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf
# (where sbatch, squeue, sacct, scontrol and submitit find them with no env vars), starts the
# daemons by hand, registers the cluster and an account in the accounting DB, and exits 0 once
# `sinfo` shows the node idle and `sacct` answers. Everything else lives under ONE folder,
#   ${ROADMAP_SLURM_DIR:-/tmp/convnext-roadmap-slurm}
#     log/    munged.log mariadb.log slurmdbd.log slurmctld.log slurmd.log  (read these on failure)
#     run/    pid files (munge/munged.pid, mysql/mariadbd.pid, slurm*.pid), MariaDB socket
#     state/  MariaDB datadir, slurmctld state, slurmd spool, munge seed
# One cluster per machine: /etc/slurm, /run/munge and ports 6817-6819 are shared by any folder.
# Other env: ROADMAP_SLURM_TIMEOUT (s to wait for each daemon, default 90),
#            ROADMAP_SLURM_DB_PORT (MariaDB port on 127.0.0.1, default 3307).
#
# Run again while the cluster runs: if all five daemons named in the pid files are alive, it
# only checks that sinfo/sacct answer and exits 0 (nothing started twice). If only some are
# alive (one crashed), it stops those with stop_cluster.sh and starts all five afresh.
# Job ids and accounting survive a stop and start (the state folder is kept; slurmctld -i skips
# unreadable state); `stop_cluster.sh --purge` deletes the folder for a blank cluster.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$HERE/_common.sh"

TIMEOUT="${ROADMAP_SLURM_TIMEOUT:-90}"
DB_PORT="${ROADMAP_SLURM_DB_PORT:-3307}"
CLUSTER=roadmap
ACCOUNT=roadmap
PARTITION=debug
DB_USER=slurm
DB_PASS=roadmap-slurm-local   # MariaDB listens on 127.0.0.1 only
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server-core mariadb-client-core)
T0=$SECONDS

say() { echo "start_cluster: [+$((SECONDS - T0))s] $*"; }
die() { echo "start_cluster: ERROR: $*" >&2; exit 1; }
# fail LOG_FILE MESSAGE: show the end of LOG_FILE, then die naming it.
fail() {
    echo "start_cluster: last lines of $1:" >&2
    tail -n 20 "$1" >&2 2> /dev/null || true
    die "$2; read $1"
}

# wait_until WHAT LOG_FILE CMD...: retry CMD (quietly) until it succeeds, or fail naming the log.
wait_until() {
    local what=$1 log_file=$2 deadline=$((SECONDS + TIMEOUT))
    shift 2
    until "$@" > /dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "$log_file" "$what not ready after ${TIMEOUT}s"
        sleep 0.5
    done
}

# start_daemon NAME PID_FILE LOG_FILE CMD...: run CMD (which goes to the background and writes PID_FILE),
# then wait until PID_FILE names a live NAME process.
start_daemon() {
    local name=$1 pid_file=$2 log_file=$3
    shift 3
    rm -f "$pid_file"
    "$@" < /dev/null >> "$log_file" 2>&1 || fail "$log_file" "$name failed to start"
    wait_until "$name (pid file $pid_file)" "$log_file" daemon_pid "$pid_file" "$name"
    say "$name running, pid $(daemon_pid "$pid_file" "$name")"
}

# cluster_ready [STATES]: the node's sinfo state matches STATES (default: idle) and sacct answers.
cluster_ready() {
    [[ $(sinfo -h -n "$NODE" -o %t 2> /dev/null) =~ ^(${1:-idle})$ ]] && sacct -n -X -S now > /dev/null 2>&1
}

[[ $(id -u) == 0 ]] || die "run as root"

# --- Already running? ---------------------------------------------------------------------
alive=0
for entry in "${DAEMONS[@]}"; do
    read -r name pid_file _ <<< "$entry"
    if daemon_pid "$pid_file" "$name" > /dev/null; then alive=$((alive + 1)); fi
done
NODE=$(hostname -s)
if ((alive == ${#DAEMONS[@]})); then
    wait_until "running cluster (sinfo + sacct)" "$LOG_DIR/slurmctld.log" cluster_ready 'idle|mix|alloc|comp'
    say "cluster already running (all ${#DAEMONS[@]} daemons alive, node $NODE up); nothing to do"
    exit 0
elif ((alive > 0)); then
    say "only $alive of ${#DAEMONS[@]} daemons alive: stopping them, then starting afresh"
    "$HERE/stop_cluster.sh"
fi

# --- Packages -----------------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2> /dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
    say "installed"
fi
id mysql > /dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin mysql

# --- Folders ------------------------------------------------------------------------------
# munged refuses group/world-writable folders on its paths: keep everything 0755 or tighter.
install -d -m 0755 "$SLURM_DIR" "$LOG_DIR" "$RUN_DIR" "$STATE_DIR" /etc/slurm
install -d -m 0755 "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
install -d -m 0700 -o munge -g munge "$RUN_DIR/munge" "$STATE_DIR/munge"
install -d -m 0755 -o munge -g munge /run/munge   # default socket, so clients need no config
install -d -m 0750 -o mysql -g mysql "$RUN_DIR/mysql" "$STATE_DIR/mysql"
for f in munged:munge mariadb:mysql; do
    touch "$LOG_DIR/${f%%:*}.log"
    chown "${f#*:}:${f#*:}" "$LOG_DIR/${f%%:*}.log"
    chmod 0640 "$LOG_DIR/${f%%:*}.log"
done

# --- Configs ------------------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
cat > /etc/slurm/slurm.conf <<EOF
# Written by convnext-roadmap tools/slurm/start_cluster.sh (state under $SLURM_DIR).
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire (5 s is the smallest Slurm accepts) is also how long a requeued job is held
# before it may start again (default 120 s).
AuthInfo=cred_expire=5
MailProg=/bin/true
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
# SIGTERM-to-SIGKILL grace on scancel/requeue (default 30 s; submitit ignores SIGTERM).
KillWait=5
# Scheduling passes every second instead of every 60 s (array tasks, requeued jobs).
SchedulerParameters=sched_interval=1,bf_interval=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

cat > /etc/slurm/slurmdbd.conf <<EOF
# Written by convnext-roadmap tools/slurm/start_cluster.sh (state under $SLURM_DIR).
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 0600 /etc/slurm/slurmdbd.conf   # slurmdbd insists: owned by SlurmUser, not readable by others

# --- munged -------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    install -d -m 0700 -o munge -g munge /etc/munge
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
fi
start_daemon munged "$RUN_DIR/munge/munged.pid" "$LOG_DIR/munged.log" \
    runuser -u munge -- munged --pid-file="$RUN_DIR/munge/munged.pid" \
    --log-file="$LOG_DIR/munged.log" --seed-file="$STATE_DIR/munge/munged.seed"

# --- MariaDB ------------------------------------------------------------------------------
DB_SOCKET="$RUN_DIR/mysql/mysqld.sock"
sql() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }
if [[ ! -d $STATE_DIR/mysql/mysql ]]; then
    say "initialising MariaDB datadir $STATE_DIR/mysql"
    mariadb-install-db --no-defaults --user=mysql --datadir="$STATE_DIR/mysql" \
        --auth-root-authentication-method=socket --skip-test-db >> "$LOG_DIR/mariadb.log" 2>&1 ||
        fail "$LOG_DIR/mariadb.log" "mariadb-install-db failed"
fi
start_daemon mariadbd "$RUN_DIR/mysql/mariadbd.pid" "$LOG_DIR/mariadb.log" \
    setsid --fork mariadbd --no-defaults --user=mysql --datadir="$STATE_DIR/mysql" \
    --socket="$DB_SOCKET" --pid-file="$RUN_DIR/mysql/mariadbd.pid" \
    --log-error="$LOG_DIR/mariadb.log" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --skip-name-resolve --skip-log-bin --innodb-buffer-pool-size=256M \
    --innodb-log-file-size=64M --innodb-lock-wait-timeout=900
wait_until "MariaDB (socket $DB_SOCKET)" "$LOG_DIR/mariadb.log" sql -e 'SELECT 1'
sql --batch <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';
EOF

# --- slurmdbd, accounting -----------------------------------------------------------------
start_daemon slurmdbd "$RUN_DIR/slurmdbd.pid" "$LOG_DIR/slurmdbd.log" slurmdbd
wait_until "slurmdbd (sacctmgr list cluster)" "$LOG_DIR/slurmdbd.log" sacctmgr -n list cluster
if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER" format=cluster) ]]; then
    sacctmgr -i add cluster "$CLUSTER" > /dev/null
fi
if [[ -z $(sacctmgr -n -P list account "$ACCOUNT" format=account) ]]; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=convnext-roadmap Organization=roadmap > /dev/null
fi
if [[ -z $(sacctmgr -n -P list association cluster="$CLUSTER" account="$ACCOUNT" user=root format=user) ]]; then
    sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" > /dev/null
fi
say "accounting: cluster $CLUSTER, account $ACCOUNT, user root"

# --- slurmctld, slurmd --------------------------------------------------------------------
start_daemon slurmctld "$RUN_DIR/slurmctld.pid" "$LOG_DIR/slurmctld.log" slurmctld -i
wait_until "slurmctld (scontrol ping)" "$LOG_DIR/slurmctld.log" scontrol ping
start_daemon slurmd "$RUN_DIR/slurmd.pid" "$LOG_DIR/slurmd.log" slurmd -N "$NODE"
wait_until "node $NODE idle in sinfo + sacct" "$LOG_DIR/slurmd.log" cluster_ready
say "cluster ready in $((SECONDS - T0))s: node $NODE ($CPUS CPUs, ${MEM_MB} MB), partition $PARTITION, logs in $LOG_DIR"
