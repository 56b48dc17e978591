#!/usr/bin/env bash
# A one-node Slurm cluster in a scratch directory, for the tests of the shipped sbatch scripts.
#   bash scripts/slurm-local.sh start DIR   # installs the packages if missing, starts munged (unless one
#                                           # answers already), slurmctld and slurmd; waits for the node
#   bash scripts/slurm-local.sh stop DIR    # stops only the daemons that `start DIR` started, by PID
# Clients then need SLURM_CONF=DIR/slurm.conf. State, spool, logs and PID files all live in DIR.
# Needs root (apt-get, munged and slurmd run as root).
set -euo pipefail
cmd=${1:-} dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop_pidfile() {
    local f=$1
    [ -s "$f" ] || return 0
    local pid
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

case "$cmd" in
start)
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null ||
        ! command -v munged >/dev/null; then
        echo "slurm-local: apt-get install slurmctld slurmd slurm-client munge"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
    fi
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    # munge: reuse a running munged, else start one (with the key the package generated)
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        if [ ! -s /etc/munge/munge.key ]; then
            (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null)
            chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        fi
        mkdir -p /run/munge
        chown munge:munge /run/munge 2>/dev/null || true
        munged --force --pid-file="$dir/munged.pid"
        for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    host=$(hostname -s)
    cat >"$dir/slurm.conf" <<CONF
ClusterName=arbor-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SchedulerType=sched/backfill
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
CONF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 100); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "slurm-local: up ($host, $(nproc) CPUs); export SLURM_CONF=$SLURM_CONF"
            exit 0
        fi
        sleep 0.2
    done
    echo "slurm-local: the node did not come up; logs:" >&2
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    exit 1
    ;;
stop)
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munged.pid"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
