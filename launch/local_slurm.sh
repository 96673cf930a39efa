#!/usr/bin/env bash
# A real Slurm with accounting on this machine, for the Slurm tests and for laptops: one node (the
# default) or N nodes, each in its own network, UTS and mount namespace (own hostname and address).
#
#   launch/local_slurm.sh start [--nodes N]  install (Debian packages) if needed, configure, start,
#                                            wait ready; N >= 2: nodes n1..nN on a private bridge
#   launch/local_slurm.sh stop               stop every daemon by its PID file; remove the nodes'
#                                            namespaces, veths and bridge
#   launch/local_slurm.sh status             daemons, node state, cluster in the accounting database
#   launch/local_slurm.sh reset              stop, then wipe the controller state and the accounting database
#   launch/local_slurm.sh kill-node NAME     a node failure: its link goes down and every process
#                                            in its namespace is killed (SIGKILL)
#   launch/local_slurm.sh revive-node NAME   link up, slurmd started again; the node returns idle
#
# Needs root on Debian/Ubuntu; no systemd: every daemon is started by hand. Settings that matter
# (and why) are next to each line of slurm.conf below. Environment:
#   RESDEPTH_SLURM_CLUSTER  cluster name (default resdepth)
#   RESDEPTH_SLURM_CPUS     CPUs each node advertises (default 4 x real, so small jobs share cores)
#   RESDEPTH_SLURM_SUBNET   first three octets of the nodes' private /24 (default 10.77.0); the
#                           addresses exist only on the bridge and in the namespaces made here
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
# Multi-node layout: a bridge in the root namespace (the controller's address), one network
# namespace per node with a veth on the bridge, a hosts file per node bind-mounted over /etc/hosts
# inside the node's own mount namespace (the machine's /etc/hosts is never edited).
SUBNET=${RESDEPTH_SLURM_SUBNET:-10.77.0}
BRIDGE=rdslurm0
NODES_DIR=/run/resdepth-slurm
LAYOUT_FILE=/var/lib/slurm/resdepth-layout
NODES=1

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

# node_lines CPUS MEM: the NodeName lines of slurm.conf for the current layout.
node_lines() {
    local i
    if ((NODES == 1)); then
        echo "NodeName=$(hostname -s) NodeAddr=127.0.0.1 CPUs=$1 RealMemory=$2 State=UNKNOWN"
        return
    fi
    for ((i = 1; i <= NODES; i++)); do
        echo "NodeName=n$i NodeAddr=$SUBNET.$((10 + i)) CPUs=$1 RealMemory=$2 State=UNKNOWN"
    done
}

write_slurm_conf() {
    local host cpus mem node_line ctl_addr=127.0.0.1 pid=$SLURMD_PID spool=$SPOOL_DIR log=slurmd
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
    node_line=$(slurmd -C | head -n 1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    mem=$((mem * 95 / 100 / NODES))  # under what slurmd sees, or the node drains ("Low RealMemory")
    cpus=${RESDEPTH_SLURM_CPUS:-$(($(nproc) * 4))}
    if ((NODES > 1)); then
        # The controller listens on the bridge; each node's slurmd has its own pid file, spool and log.
        ctl_addr=$SUBNET.1 pid=/run/slurmd-%n.pid spool=$SPOOL_DIR-%n log=slurmd-%n
    fi
    mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
    chown slurm:slurm "$STATE_DIR" "$LOG_DIR"
    cat >"$CONF_DIR/slurm.conf.new" <<EOF
# Slurm ($NODES node(s)) written by launch/local_slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$host($ctl_addr)
SlurmUser=slurm
AuthType=auth/munge
# Credentials of a requeued job expire after 10 s instead of 120 s, so it may start again quickly.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$spool
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/$log.log
# No cgroups needed: portable to containers and laptops.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobRequeue=1
# A node that registers again after a failure (revive-node, a restarted slurmd) returns idle at
# once instead of staying DOWN until an administrator resumes it.
ReturnToService=2
# Node failure is noticed within about 15 s instead of 300: the controller pings each slurmd every
# SlurmdTimeout/3 s and marks it DOWN after SlurmdTimeout s without an answer; its jobs are then
# requeued (JobRequeue=1) and start again cred_expire + 1 s later. Lower values (3 s) work on an idle
# machine but mark busy nodes down falsely when the 2 cores are saturated by tests.
SlurmdTimeout=10
# How long a daemon waits for a reply: 5 s lets a requeue notice a dead node's step quickly.
MessageTimeout=5
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
$(node_lines "$cpus" "$mem")
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
    if ((NODES > 1)); then
        start_nodes
        return
    fi
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

# ---- multi-node: namespaces, veths, bridge -------------------------------------------------------

node_ns() { echo "rdslurm-$1"; }          # network namespace of node NAME
node_veth() { echo "rdv-$1"; }            # its veth end on the bridge (root namespace)
node_pid() { echo "/run/slurmd-$1.pid"; }
layout_nodes() { [[ -r $LAYOUT_FILE ]] && cat "$LAYOUT_FILE" || echo 1; }

# write_hosts NAME: the node's hosts file: the controller and every node by their bridge addresses.
write_hosts() {
    local i f=$NODES_DIR/hosts-$1
    {
        echo "127.0.0.1 localhost"
        echo "$SUBNET.1 $(hostname -s)"
        for ((i = 1; i <= NODES; i++)); do echo "$SUBNET.$((10 + i)) n$i"; done
    } >"$f.new"
    # Rewritten in place (same inode): the bind mount over the node's /etc/hosts keeps seeing it.
    if [[ -f $f ]]; then cat "$f.new" >"$f" && rm -f "$f.new"; else mv "$f.new" "$f"; fi
}

setup_network() {
    local i name ns
    mkdir -p "$NODES_DIR"
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$SUBNET.1/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    for ((i = 1; i <= NODES; i++)); do
        name=n$i ns=$(node_ns "n$i")
        write_hosts "$name"
        if [[ ! -e /run/netns/$ns ]]; then
            ip netns add "$ns"
            ip link add "$(node_veth "$name")" type veth peer name eth0 netns "$ns"
            ip link set "$(node_veth "$name")" master "$BRIDGE"
            ip -n "$ns" addr add "$SUBNET.$((10 + i))/24" dev eth0
        fi
        link_up "$name"
    done
}

link_up() {
    ip link set "$(node_veth "$1")" up
    ip -n "$(node_ns "$1")" link set lo up
    ip -n "$(node_ns "$1")" link set eth0 up
}

# start_node NAME: slurmd in the node's network namespace, with its own hostname (UTS) and its own
# /etc/hosts (mount namespace). `ip netns exec` would remount /sys and break slurmd: nsenter instead.
start_node() {
    pid_alive "$(node_pid "$1")" slurmd && return 0
    mkdir -p "$SPOOL_DIR-$1"
    nsenter --net="/run/netns/$(node_ns "$1")" unshare --uts --mount --propagation slave \
        sh -c "mount --bind '$NODES_DIR/hosts-$1' /etc/hosts && hostname '$1' && exec /usr/sbin/slurmd -N '$1'"
}

nodes_state() { sinfo -h -N -o '%N %t' 2>/dev/null; }
all_idle() { [[ $(nodes_state | awk '$2 != "idle"' | wc -l) == 0 && -n $(nodes_state) ]]; }

start_nodes() {
    local i deadline=$((SECONDS + TIMEOUT_S))
    for ((i = 1; i <= NODES; i++)); do start_node "n$i"; done
    until all_idle; do
        # Nodes left down or drained by an earlier run (a killed node) are put back to work.
        nodes_state | awk '$2 ~ /^(down|drain)/ {print $1}' | while read -r n; do
            scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
        done
        ((SECONDS < deadline)) || die "nodes not idle: $(nodes_state | tr '\n' ' ') (see $LOG_DIR/slurmd-*.log)"
        sleep 0.2
    done
}

# kill_ns_processes NS: SIGKILL every process whose network namespace is NS.
kill_ns_processes() {
    local pids
    pids=$(ip netns pids "$1" 2>/dev/null || true)
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
}

cmd_kill_node() {
    local name=${1:?kill-node NAME} ns
    ns=$(node_ns "$name")
    [[ -e /run/netns/$ns ]] || die "no node $name (start --nodes N first)"
    # Link first, so nothing the node's processes send while dying reaches the others.
    ip link set "$(node_veth "$name")" down
    ip -n "$ns" link set eth0 down
    kill_ns_processes "$ns"
    say "node $name killed (link down, processes killed) at $(date +%s.%N)"
}

cmd_revive_node() {
    local name=${1:?revive-node NAME}
    NODES=$(layout_nodes)
    [[ -e /run/netns/$(node_ns "$name") ]] || die "no node $name (start --nodes N first)"
    link_up "$name"
    start_node "$name"
    local deadline=$((SECONDS + TIMEOUT_S))
    until [[ $(sinfo -h -n "$name" -o %t 2>/dev/null) == idle ]]; do
        scontrol update nodename="$name" state=resume >/dev/null 2>&1 || true
        ((SECONDS < deadline)) || die "node $name not idle: $(sinfo -h -n "$name" -o %t)"
        sleep 0.2
    done
    say "node $name back (idle)"
}

teardown_nodes() {
    local ns name
    for pidf in /run/slurmd-n*.pid; do
        [[ -e $pidf ]] && stop_daemon "$pidf" slurmd
    done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^rdslurm-' || true); do
        kill_ns_processes "$ns"
        ip netns del "$ns"
        name=${ns#rdslurm-}
        ip link del "$(node_veth "$name")" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -rf "$NODES_DIR"
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
    check_layout
    write_slurm_conf
    check_cluster_name
    ((NODES == 1)) || setup_network
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    say "ready in $((SECONDS - t0)) s: cluster $CLUSTER, nodes: $(nodes_state | tr '\n' ' ')"
}

# A controller state written for another set of nodes holds jobs on nodes that no longer exist:
# changing the layout wipes state and accounting together, as a cluster-name change does.
check_layout() {
    local before
    before=$(layout_nodes)
    if [[ -d $STATE_DIR && -n $(ls -A "$STATE_DIR" 2>/dev/null) && $before != "$NODES" ]]; then
        say "layout changes from $before to $NODES node(s); wiping controller state and accounting"
        wipe_state
    fi
    mkdir -p "$(dirname "$LAYOUT_FILE")"
    echo "$NODES" >"$LAYOUT_FILE"
}

cmd_stop() {
    teardown_nodes
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$SLURMCTLD_PID" slurmctld
    stop_daemon "$SLURMDBD_PID" slurmdbd
    stop_daemon "$MARIADB_PID" mariadbd
    stop_daemon "$MUNGE_PID" munged
}

cmd_status() {
    local ok=0
    local daemons=("munged $MUNGE_PID" "mariadbd $MARIADB_PID" "slurmdbd $SLURMDBD_PID"
        "slurmctld $SLURMCTLD_PID") i
    NODES=$(layout_nodes)
    if ((NODES == 1)); then
        daemons+=("slurmd $SLURMD_PID")
    else
        for ((i = 1; i <= NODES; i++)); do daemons+=("slurmd $(node_pid "n$i")"); done
    fi
    for d in "${daemons[@]}"; do
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

usage() { echo "usage: $0 start [--nodes N] | stop | status | reset | kill-node NAME | revive-node NAME" >&2; exit 2; }

cmd=${1:-}
shift || true
case $cmd in
    start)
        if [[ ${1:-} == --nodes ]]; then
            NODES=${2:-}
            [[ $NODES =~ ^[1-9][0-9]?$ ]] || die "--nodes wants a number of nodes from 1 to 99, got '$NODES'"
        fi
        cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    reset) wipe_state ;;
    kill-node) cmd_kill_node "$@" ;;
    revive-node) cmd_revive_node "$@" ;;
    *) usage ;;
esac
