#!/usr/bin/env bash
# A real single-node Slurm with accounting on this machine, for the Slurm tests and for laptops.
#
#   launch/local_slurm.sh start    install (Debian packages) if needed, configure, start, wait ready
#   launch/local_slurm.sh stop     stop every daemon by its PID file
#   launch/local_slurm.sh status   daemons, node state, cluster in the accounting database
#   launch/local_slurm.sh reset    stop, then wipe the controller state and the accounting database
#
# Needs root on Debian/Ubuntu; no systemd: every daemon is started by hand. Settings that matter
# (and why) are next to each line of slurm.conf below. Environment:
#   RESDEPTH_SLURM_CLUSTER  cluster name (default resdepth)
#   RESDEPTH_SLURM_CPUS     CPUs the node advertises (default 4 x real, so small jobs share cores)
set -euo pipefail

CLUSTER=${RESDEPTH_SLURM_CLUSTER:-resdepth}
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
LOG_DIR=/var/log/slurm
DB_SOCK=/run/mysqld/mysqld.sock
DB_NAME=slurm_acct_db
MUNGE_PID=/run/munge/munged.pid
MARIADB_PID=/run/mysqld/mysqld.pid
SLURMDBD_PID=/run/slurmdbd.pid
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
TIMEOUT_S=60

say() { echo "local_slurm: $*"; }
die() { echo "local_slurm: error: $*" >&2; exit 1; }

# pid_alive PIDFILE COMM: true when the PID file names a live process whose command is COMM.
pid_alive() {
    local pid
    [[ -r $1 ]] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm") == "$2" ]]
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out waiting for $what (logs in $LOG_DIR)"
        sleep 0.2
    done
}

install_packages() {
    local missing=()
    for bin in slurmctld slurmd sinfo munged slurmdbd mariadbd; do
        command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || missing+=("$bin")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root to install ${PKGS[*]}"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${PKGS[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Only refresh the package lists when they do not know the packages (saves ~5 s otherwise).
    if ! apt-cache show slurmctld >/dev/null 2>&1; then
        apt-get update -qq
    fi
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
}

write_slurm_conf() {
    local host cpus mem node_line
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
    node_line=$(slurmd -C | head -n 1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    mem=$((mem * 95 / 100))  # a little under what slurmd sees, or the node drains ("Low RealMemory")
    cpus=${RESDEPTH_SLURM_CPUS:-$(($(nproc) * 4))}
    mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
    chown slurm:slurm "$STATE_DIR" "$LOG_DIR"
    cat >"$CONF_DIR/slurm.conf.new" <<EOF
# Single-node Slurm written by launch/local_slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# Credentials of a requeued job expire after 10 s instead of 120 s, so it may start again quickly.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups needed: portable to containers and laptops.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobRequeue=1
ReturnToService=2
KillWait=10
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
# A job whose afterok dependency failed is cancelled instead of pending forever.
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Accounting: without sacct, submitit never sees a cancelled or killed job finish.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
# The node advertises more CPUs than it has, so several one-CPU test jobs run side by side.
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
    cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# Written by launch/local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=$SLURMDBD_PID
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=slurm
EOF
    chown slurm:slurm "$CONF_DIR/slurmdbd.conf"
    chmod 0600 "$CONF_DIR/slurmdbd.conf"
    mkdir -p /etc/mysql/mariadb.conf.d
    cat >/etc/mysql/mariadb.conf.d/99-resdepth-slurm.cnf <<EOF
# Written by launch/local_slurm.sh: what slurmdbd asks of InnoDB.
[mariadbd]
innodb_buffer_pool_size=512M
innodb_lock_wait_timeout=900
EOF
}

# A state directory written under another cluster name kills slurmctld ("CLUSTER NAME MISMATCH");
# job ids would also clash with old accounting records, so state and database go together.
check_cluster_name() {
    local f=$STATE_DIR/clustername
    if [[ -f $f && $(cat "$f") != "$CLUSTER" ]]; then
        say "state directory belongs to cluster $(cat "$f"); wiping it and the accounting database"
        wipe_state
    fi
}

start_munge() {
    pid_alive "$MUNGE_PID" munged && return 0
    mkdir -p /run/munge
    chown munge:munge /run/munge
    [[ -f /etc/munge/munge.key ]] || runuser -u munge -- /usr/sbin/mungekey --create
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 munged munge -n
}

db_ready() { mariadb --socket="$DB_SOCK" -e 'SELECT 1'; }

start_mariadb() {
    if ! pid_alive "$MARIADB_PID" mariadbd; then
        mkdir -p /run/mysqld
        chown mysql:mysql /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
        fi
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket="$DB_SOCK" \
            --pid-file="$MARIADB_PID" --log-error="$LOG_DIR/mariadb.log" </dev/null >/dev/null 2>&1 &
    fi
    wait_for "$TIMEOUT_S" mariadb db_ready
    mariadb --socket="$DB_SOCK" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
        GRANT ALL ON $DB_NAME.* TO 'slurm'@'localhost';"
}

cluster_listed() { sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; }

start_slurmdbd() {
    if ! pid_alive "$SLURMDBD_PID" slurmdbd; then
        /usr/sbin/slurmdbd
    fi
    wait_for "$TIMEOUT_S" slurmdbd sacctmgr -n -P show cluster
    cluster_listed || sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null
    wait_for 10 "cluster $CLUSTER in the accounting database" cluster_listed
}

node_state() { sinfo -h -N -o %t 2>/dev/null | head -n 1; }
node_idle() { [[ $(node_state) == idle ]]; }

start_slurm() {
    pid_alive "$SLURMCTLD_PID" slurmctld || /usr/sbin/slurmctld
    wait_for "$TIMEOUT_S" slurmctld scontrol ping
    pid_alive "$SLURMD_PID" slurmd || /usr/sbin/slurmd
    local deadline=$((SECONDS + TIMEOUT_S)) state
    until node_idle; do
        state=$(node_state)
        # A node left down or drained by an earlier run (e.g. killed slurmd) is put back to work.
        if [[ $state == down* || $state == drain* ]]; then
            scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        fi
        ((SECONDS < deadline)) || die "node is '$state', not idle (see $LOG_DIR/slurmd.log)"
        sleep 0.2
    done
}

# stop_daemon PIDFILE COMM: TERM, then KILL after 15 s; only the process the PID file names.
stop_daemon() {
    local pid i
    pid_alive "$1" "$2" || return 0
    pid=$(tr -dc 0-9 <"$1")
    kill "$pid"
    for ((i = 0; i < 75; i++)); do
        [[ -d /proc/$pid ]] || return 0
        sleep 0.2
    done
    say "$2 ($pid) ignored TERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

wipe_state() {
    cmd_stop
    rm -rf "${STATE_DIR:?}"/* "${SPOOL_DIR:?}"/*
    if [[ -d /var/lib/mysql/$DB_NAME ]]; then
        start_mariadb
        mariadb --socket="$DB_SOCK" -e "DROP DATABASE IF EXISTS $DB_NAME"
        stop_daemon "$MARIADB_PID" mariadbd
    fi
}

cmd_start() {
    local t0=$SECONDS
    [[ $(id -u) == 0 ]] || die "start needs root (it starts munged, mariadbd and the Slurm daemons)"
    install_packages
    write_slurm_conf
    check_cluster_name
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    say "ready in $((SECONDS - t0)) s: cluster $CLUSTER, node $(hostname -s) $(node_state)"
}

cmd_stop() {
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$SLURMCTLD_PID" slurmctld
    stop_daemon "$SLURMDBD_PID" slurmdbd
    stop_daemon "$MARIADB_PID" mariadbd
    stop_daemon "$MUNGE_PID" munged
}

cmd_status() {
    local ok=0
    for d in "munged $MUNGE_PID" "mariadbd $MARIADB_PID" "slurmdbd $SLURMDBD_PID" \
        "slurmctld $SLURMCTLD_PID" "slurmd $SLURMD_PID"; do
        set -- $d
        if pid_alive "$2" "$1"; then
            printf '%-10s running (pid %s)\n' "$1" "$(tr -dc 0-9 <"$2")"
        else
            printf '%-10s stopped\n' "$1"
            ok=1
        fi
    done
    if ((ok == 0)); then
        sinfo -N -o '%N %t %c %m'
        cluster_listed && echo "cluster $CLUSTER registered in accounting" || ok=1
    fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    reset) wipe_state ;;
    *) echo "usage: $0 start|stop|status|reset" >&2; exit 2 ;;
esac
