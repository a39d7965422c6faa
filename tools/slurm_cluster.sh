#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for testing the SLURM executor profile
# (tests/test_cluster.py, `make test-cluster`). Debian/Ubuntu, run as root.
#
#   tools/slurm_cluster.sh start    install what is missing, write the configs, start the daemons,
#                                   wait until the node is idle (idempotent: a running cluster is kept)
#   tools/slurm_cluster.sh stop     cancel every job, stop every daemon this script started (idempotent)
#   tools/slurm_cluster.sh status   daemons, node, partitions, queue; exit 0 only when all are up
#
# What runs:
#   munged      authentication (reused, and then never stopped, if one is already running)
#   mariadbd    a private MariaDB instance (own data directory, 127.0.0.1:$SLURM_CLUSTER_DB_PORT only)
#   slurmdbd    accounting, stored in that MariaDB
#   slurmctld   the controller; slurmd the one compute node, named `hostname -s`, with the CPU
#               topology and memory `slurmd -C` measures
# Partitions: `cpu` (default) and `gpu`, both on the one node.
#
# Why accounting (slurmdbd + MariaDB) and not only squeue: snakemake-executor-plugin-slurm 2.x tracks
# job states with `sacct` whenever the `sacct` binary exists (it ships in slurm-client, so it always
# does here), and `sacct` reads job records from the accounting database (slurmdbd). The alternative,
# `--slurm-status-command squeue`, works only while finished jobs are still in slurmctld's memory
# (MinJobAge) and is not what profiles/slurm uses on a real cluster; with accounting the profile's
# default path (sacct) is the one tested, and so is the plugin's failed-node lookup (`sacct -j`).
#
# The GPU: rules with `resources: gpu=1` are submitted by the plugin as `sbatch ... --gpus=1`, which
# Slurm rejects ("Requested node configuration is not available") unless a node has a `gpu` GRES. The
# node therefore declares one fake GPU (gres.conf points at a plain file instead of /dev/nvidia0: it is
# counted and scheduled, nothing is bound). A GPU job gets the GRES allocation, not a real device.
#
# Files: /etc/slurm/{slurm,gres,slurmdbd}.conf (written only if absent or written by this script),
# state under $SLURM_CLUSTER_STATE, pids under $SLURM_CLUSTER_RUN, logs under $SLURM_CLUSTER_LOG.
set -euo pipefail

STATE=${SLURM_CLUSTER_STATE:-/var/lib/slurm-cluster}
RUN=${SLURM_CLUSTER_RUN:-/run/slurm-cluster}
LOG=${SLURM_CLUSTER_LOG:-/var/log/slurm-cluster}
CLUSTER=${SLURM_CLUSTER_NAME:-local}
DB_PORT=${SLURM_CLUSTER_DB_PORT:-3307}
CONF_DIR=/etc/slurm
MARKER="# Written by tools/slurm_cluster.sh"
NODE=$(hostname -s)
PACKAGES=(slurm-wlm slurm-client munge slurmdbd slurm-wlm-mysql-plugin mariadb-server)

log() { printf '[slurm_cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes -------------------------------------------------------------------------------------

# alive PIDFILE NAME: the pid in PIDFILE is a running process whose command name is NAME.
# Sets ALIVE_PID. (A daemon removes its pid file when it exits, so the file may vanish at any time.)
alive() {
    ALIVE_PID=$(tr -dc '0-9' 2>/dev/null < "$1") || return 1
    [[ -n $ALIVE_PID ]] && [[ "$(ps -p "$ALIVE_PID" -o comm= 2>/dev/null)" == "$2" ]]
}

# wait_for SECONDS DESCRIPTION COMMAND...: run COMMAND every second until it succeeds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    for ((i = 0; i < seconds; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    die "timed out after ${seconds}s waiting for $what"
}

# stop_pid PIDFILE NAME: TERM the process, wait up to 60 s, then KILL; remove the pid file.
stop_pid() {
    local pidfile=$1 name=$2 pid
    if alive "$pidfile" "$name"; then
        pid=$ALIVE_PID
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 60; i++)); do
            alive "$pidfile" "$name" || break
            sleep 1
        done
        if alive "$pidfile" "$name"; then
            log "$name did not stop in 60 s, killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
        fi
    fi
    rm -f "$pidfile"
}

# --- install ---------------------------------------------------------------------------------------

install_packages() {
    local missing=0 cmd
    for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd mariadb-install-db; do
        command -v "$cmd" >/dev/null 2>&1 || missing=1
    done
    [[ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/accounting_storage_mysql.so ]] \
        || compgen -G "/usr/lib/*/slurm-wlm/accounting_storage_mysql.so" >/dev/null || missing=1
    ((missing)) || return 0
    [[ $EUID -eq 0 ]] || die "packages missing and not root: apt-get install ${PACKAGES[*]}"
    log "installing ${PACKAGES[*]}"
    # The packages' postinst scripts must not start the daemons with their default configs: this
    # script starts them. policy-rc.d (exit 101) tells invoke-rc.d to start nothing.
    local policy_added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive nice -n 10 apt-get -q -y -o Dpkg::Use-Pty=0)
    if ! "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}"; then
        "${apt[@]}" update
        "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}" || {
            ((policy_added)) && rm -f /usr/sbin/policy-rc.d
            die "apt-get install failed"
        }
    fi
    ((policy_added)) && rm -f /usr/sbin/policy-rc.d
    return 0
}

# --- configuration ---------------------------------------------------------------------------------

# write_conf PATH OWNER MODE: stdin -> PATH, unless PATH exists and was not written by this script.
# Prints "changed" when the content differs from what was there.
write_conf() {
    local path=$1 owner=$2 mode=$3 tmp
    tmp=$(mktemp)
    cat > "$tmp"
    if [[ -e $path ]] && ! grep -qF "$MARKER" "$path"; then
        rm -f "$tmp"
        die "$path exists and was not written by this script; move it away first"
    fi
    if ! cmp -s "$tmp" "$path" 2>/dev/null; then
        install -o "$owner" -g "$owner" -m "$mode" "$tmp" "$path"
        echo changed
    fi
    rm -f "$tmp"
}

node_hardware() {
    # `slurmd -C` prints the node line as slurmd itself measures it (CPUs, sockets, cores, threads,
    # RealMemory), so the configured node always matches what slurmd reports on registration.
    slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //'
}

write_configs() {
    local hardware db_pass changed=""
    hardware=$(node_hardware)
    [[ $hardware == *CPUs=* && $hardware == *RealMemory=* ]] || die "unexpected slurmd -C output: $hardware"
    mkdir -p "$CONF_DIR"

    changed+=$(write_conf "$CONF_DIR/slurm.conf" root 644 <<EOF
$MARKER on $(hostname -s); every start rewrites it, do not edit.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups (containers often have none writable): processes tracked through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SchedulerType=sched/backfill
# Cores and memory are the consumable resources: jobs run side by side while both fit.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# Finished jobs stay visible to squeue for 5 minutes; sacct (slurmdbd) keeps them for good.
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageTRES=gres/gpu
# The plugin submits with --comment rule_<name>[_wildcards_...]: keep it, so sacct shows each job's rule.
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
MailProg=/bin/true
InactiveLimit=0
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 $hardware Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
)
    # slurmd drops a GPU GRES without File= ("Ignoring file-less GPU"); a plain file stands in for the
    # device node (no mknod needed, nothing is bound: task/none does no device confinement).
    mkdir -p "$STATE/fake-gpu"
    touch "$STATE/fake-gpu/gpu0"
    changed+=$(write_conf "$CONF_DIR/gres.conf" root 644 <<EOF
$MARKER: one fake GPU, so that --gpus=1 can be scheduled.
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE/fake-gpu/gpu0
EOF
)
    mkdir -p "$STATE"
    chmod 755 "$STATE"
    if [[ ! -s $STATE/db_password ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$STATE/db_password")
    fi
    db_pass=$(cat "$STATE/db_password")
    changed+=$(write_conf "$CONF_DIR/slurmdbd.conf" slurm 600 <<EOF
$MARKER on $(hostname -s); every start rewrites it, do not edit.
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
EOF
)
    echo "$changed"
}

# --- daemons ---------------------------------------------------------------------------------------

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        return 0
    fi
    [[ -s /etc/munge/munge.key ]] || { log "creating /etc/munge/munge.key"; runuser -u munge -- mungekey --create; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    wait_for 30 munged munge_works
    # Ours: stop ends it. A munged that was running before is left alone.
    cp /run/munge/munged.pid "$RUN/munged.pid"
}

db() { mariadb --no-defaults --protocol=socket --socket="$RUN/mysql/mysqld.sock" -u root "$@"; }

start_mariadb() {
    local datadir=$STATE/mysql
    mkdir -p "$RUN/mysql" "$LOG/mysql"
    chown mysql:mysql "$RUN/mysql" "$LOG/mysql"
    if ! alive "$RUN/mysql/mysqld.pid" mariadbd; then
        if [[ ! -d $datadir/mysql ]]; then
            log "initialising MariaDB in $datadir"
            mkdir -p "$datadir"
            chown mysql:mysql "$datadir"
            mariadb-install-db --no-defaults --user=mysql --datadir="$datadir" \
                --auth-root-authentication-method=socket --skip-test-db >"$LOG/mysql/install.log" 2>&1 \
                || die "mariadb-install-db failed, see $LOG/mysql/install.log"
        fi
        log "starting mariadbd (127.0.0.1:$DB_PORT)"
        # A private instance: no option files read, loopback only, small buffers; the InnoDB settings
        # are the ones slurmdbd's documentation asks for (it warns about smaller ones).
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$datadir" \
            --socket="$RUN/mysql/mysqld.sock" --pid-file="$RUN/mysql/mysqld.pid" --port="$DB_PORT" \
            --bind-address=127.0.0.1 --skip-name-resolve --log-error="$LOG/mysql/mariadb.log" \
            --innodb-buffer-pool-size=128M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
            --max-connections=50 </dev/null >>"$LOG/mysql/mariadb.log" 2>&1 &
        local pid=$!
        for ((i = 0; i < 60; i++)); do
            db -e "SELECT 1" >/dev/null 2>&1 && break
            kill -0 "$pid" 2>/dev/null || die "mariadbd exited: $(tail -n 5 "$LOG/mysql/mariadb.log")"
            sleep 1
        done
        db -e "SELECT 1" >/dev/null || die "MariaDB did not answer in 60 s, see $LOG/mysql/mariadb.log"
    fi
    local pass
    pass=$(cat "$STATE/db_password")
    db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
           CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
           ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
    if ! alive "$RUN/slurmdbd.pid" slurmdbd; then
        log "starting slurmdbd"
        slurmdbd
    fi
    wait_for 90 "slurmdbd" sacctmgr -n list cluster
    if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER" format=cluster) ]]; then
        log "registering cluster $CLUSTER in the accounting database"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1; }
node_idle() { [[ $(node_state) =~ ^(idle|mix|alloc)$ ]]; }

start_slurm() {
    if ! alive "$RUN/slurmctld.pid" slurmctld; then
        log "starting slurmctld"
        slurmctld
    fi
    wait_for 60 "slurmctld" scontrol ping
    if ! alive "$RUN/slurmd.pid" slurmd; then
        log "starting slurmd"
        slurmd
    fi
    for ((i = 0; i < 60; i++)); do
        node_idle && break
        # A node left down or drained by an earlier run (ReturnToService covers most cases).
        if [[ $(node_state) =~ ^(down|drain|drng|fail) ]]; then
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        fi
        sleep 1
    done
    node_idle || die "node $NODE is '$(node_state)', see $LOG/slurmd.log and $LOG/slurmctld.log"
}

slurm_daemons_running() {
    alive "$RUN/slurmd.pid" slurmd || alive "$RUN/slurmctld.pid" slurmctld || alive "$RUN/slurmdbd.pid" slurmdbd
}

cancel_jobs() {
    local jobs
    alive "$RUN/slurmctld.pid" slurmctld || return 0
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    [[ -n $jobs ]] || return 0
    log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        [[ -z $(squeue -h -t pending,running,completing,suspended -o %i 2>/dev/null) ]] && return 0
        sleep 1
    done
    log "warning: jobs still listed after 30 s: $(squeue -h -o '%i %T' | tr '\n' ' ')"
}

stop_slurm_daemons() {
    stop_pid "$RUN/slurmd.pid" slurmd
    stop_pid "$RUN/slurmctld.pid" slurmctld
    stop_pid "$RUN/slurmdbd.pid" slurmdbd
}

# --- commands --------------------------------------------------------------------------------------

cmd_start() {
    [[ $EUID -eq 0 ]] || die "run as root (it installs packages and starts system daemons)"
    install_packages
    mkdir -p "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd"
    chown slurm:slurm "$RUN" "$LOG" "$STATE/slurmctld"
    local changed
    changed=$(write_configs)
    if [[ -n $changed ]] && slurm_daemons_running; then
        log "configuration changed: restarting the Slurm daemons"
        cancel_jobs
        stop_slurm_daemons
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    log "cluster '$CLUSTER' is up: node $NODE ($(node_hardware | grep -o 'CPUs=[0-9]*'), $(node_hardware | grep -o 'RealMemory=[0-9]*') MB, 1 fake GPU), partitions cpu (default), gpu"
}

cmd_stop() {
    [[ $EUID -eq 0 ]] || die "run as root"
    cancel_jobs
    stop_slurm_daemons
    stop_pid "$RUN/mysql/mysqld.pid" mariadbd
    if [[ -e $RUN/munged.pid ]]; then
        stop_pid "$RUN/munged.pid" munged
        rm -f /run/munge/munged.pid
    fi
    log "stopped"
}

cmd_status() {
    local ok=0 name pidfile
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        pidfile=$RUN/$name.pid
        [[ $name == mariadbd ]] && pidfile=$RUN/mysql/mysqld.pid
        if alive "$pidfile" "$name"; then
            echo "$name: running (pid $ALIVE_PID)"
        elif [[ $name == munged ]] && munge_works; then
            echo "munged: running (not started by this script)"
        else
            echo "$name: stopped"
            ok=1
        fi
    done
    if alive "$RUN/slurmctld.pid" slurmctld; then
        sinfo -o '%P %a %D %t %c %m %G %N' || true
        squeue || true
    fi
    return "$ok"
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
