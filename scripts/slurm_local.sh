#!/usr/bin/env bash
# A throw-away one-node SLURM cluster on this machine, for `make test-slurm` (Debian/Ubuntu, run as root).
#
#   scripts/slurm_local.sh run [--accounting] -- COMMAND...
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge if missing (plus slurmdbd and mariadb-server with
# --accounting), writes its whole configuration, state and logs into a fresh temporary folder (nothing under
# /etc is changed), starts munged, [mariadbd, slurmdbd,] slurmctld and slurmd there, runs COMMAND with
# SLURM_CONF pointing at that cluster, and stops every daemon it started, by the PID it recorded, however
# COMMAND ends (a trap). Every daemon listens on 127.0.0.1 only and every client talks to localhost only.
#
# Environment: SLURM_LOCAL_CPUS (CPUs the node announces, default 6: several 1- and 2-task test jobs at once on
# a 2-core box, and still fewer than hydra/launcher=slurm's default cpus_per_task of 8), SLURM_LOCAL_PORT (first
# of three ports, default 6817), SLURM_LOCAL_KEEP=1 (keep the folder).
set -euo pipefail

CPUS=${SLURM_LOCAL_CPUS:-6}
PORT=${SLURM_LOCAL_PORT:-6817}
# A requeued job may start again only after the job credential's lifetime (SLURM's default: 120 s); the test
# cluster shortens it so that a requeue costs seconds, not minutes.
CRED_EXPIRE_S=${SLURM_LOCAL_CRED_EXPIRE_S:-10}
ACCOUNTING=0
PIDS=()
DIR=""

die() { echo "slurm_local.sh: $*" >&2; exit 2; }

usage() { die "usage: $0 run [--accounting] -- COMMAND..."; }

need_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "needs root to install ${missing[*]} (or install them first)"
    echo "slurm_local.sh: installing ${missing[*]}"
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -q; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Start a daemon in the foreground of a background job and remember its PID (each stays in our control).
start() {
    local name=$1; shift
    "$@" >>"$DIR/log/$name.out" 2>&1 &
    PIDS+=("$!")
    echo "$name $!" >>"$DIR/pids"
}

stop_all() {
    local rc=$?
    trap - EXIT INT TERM
    local i jobs
    # jobs still queued or running (a failed test's): cancel them, so that no job process outlives slurmd
    if [ -n "$DIR" ] && jobs=$(timeout 20 squeue --noheader --format=%A 2>/dev/null) && [ -n "$jobs" ]; then
        timeout 20 scancel $jobs 2>/dev/null || true
        for _ in $(seq 90); do
            [ -z "$(timeout 10 squeue --noheader --format=%A 2>/dev/null)" ] && break
            sleep 1
        done
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do   # slurmd first, munged last
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        for _ in $(seq 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    if [ -n "$DIR" ]; then
        if [ "$rc" != 0 ] || [ -n "${SLURM_LOCAL_KEEP:-}" ]; then
            echo "slurm_local.sh: daemons stopped; logs kept in $DIR/log" >&2
        else
            rm -rf "$DIR"
        fi
    fi
    exit "$rc"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    while [ $SECONDS -lt $deadline ]; do
        timeout 10 "$@" >"$DIR/log/wait.out" 2>&1 && return 0
        sleep 0.5
    done
    die "$what did not come up in ${seconds} s ($(tail -1 "$DIR/log/wait.out")); see $DIR/log"
}

write_slurm_conf() {
    local storage="accounting_storage/none"
    [ "$ACCOUNTING" = 1 ] && storage="accounting_storage/slurmdbd"
    local mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
    cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=dggganlocal
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE_S
# listen on the address localhost resolves to, never on every interface
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
# SIGTERM to SIGKILL: one training batch plus writing last.ckpt, on a loaded 2-core machine (SLURM's default: 30)
KillWait=60
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=2000
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=$storage
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
# the node may announce more CPUs than the machine has (several 1-CPU test jobs at once)
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start_accounting() {
    need_packages slurmdbd mariadb-server
    mkdir -p "$DIR/mysql" "$DIR/mysql-run" "$DIR/mysql-tmp" "$DIR/lib"
    chown mysql:mysql "$DIR/mysql" "$DIR/mysql-run" "$DIR/mysql-tmp"
    # its temporary files in a folder of its own (the mysql user may not write to the caller's $TMPDIR)
    TMPDIR="$DIR/mysql-tmp" mariadb-install-db --user=mysql --datadir="$DIR/mysql" \
        --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.out" 2>&1
    # no TCP at all: slurmdbd reaches it through the socket (MYSQL_UNIX_PORT below)
    start mariadbd env TMPDIR="$DIR/mysql-tmp" /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql" --skip-networking \
        --socket="$DIR/mysql-run/mysqld.sock" --pid-file="$DIR/mysql-run/mariadbd.pid" --log-error="$DIR/mysql-run/mariadbd.log"
    wait_for 60 mariadbd test -S "$DIR/mysql-run/mysqld.sock"
    install -m 600 /dev/null "$DIR/etc/slurmdbd.conf"
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    # slurmdbd has no setting that keeps it off 0.0.0.0: a small preloaded bind() turns that into 127.0.0.1.
    cat >"$DIR/lib/loopback_bind.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    bind_fn next = (bind_fn)dlsym(RTLD_NEXT, "bind");
    struct sockaddr_in local;
    if (addr != NULL && addr->sa_family == AF_INET && len >= (socklen_t)sizeof local) {
        memcpy(&local, addr, sizeof local);
        if (local.sin_addr.s_addr == htonl(INADDR_ANY)) {
            local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return next(fd, (const struct sockaddr *)&local, sizeof local);
        }
    }
    return next(fd, addr, len);
}
EOF
    command -v gcc >/dev/null || need_packages gcc libc6-dev
    gcc -shared -fPIC -O2 -o "$DIR/lib/loopback_bind.so" "$DIR/lib/loopback_bind.c" -ldl
    start slurmdbd env MYSQL_UNIX_PORT="$DIR/mysql-run/mysqld.sock" LD_PRELOAD="$DIR/lib/loopback_bind.so" \
        /usr/sbin/slurmdbd -D
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster dggganlocal >/dev/null
}

up() {
    need_packages slurmctld slurmd slurm-client munge
    DIR=$(mktemp -d /tmp/dgggan-slurm.XXXXXX)
    chmod 755 "$DIR"
    mkdir -p "$DIR"/{etc,run,state,spool,log,munge}
    chown munge:munge "$DIR/munge"
    export SLURM_CONF="$DIR/etc/slurm.conf"   # every client and daemon below reads this cluster's config
    write_slurm_conf
    # munge's default socket (slurmdbd authenticates through it whatever its AuthInfo says); a munged that
    # already serves it (the machine's own) is used as it is
    if ! munge -n >/dev/null 2>&1; then
        mkdir -p /run/munge
        chown munge:munge /run/munge
        start munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
            --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/seed"
        wait_for 30 munged munge -n
    fi
    [ "$ACCOUNTING" = 1 ] && start_accounting
    start slurmctld /usr/sbin/slurmctld -D -f "$SLURM_CONF"
    wait_for 60 slurmctld scontrol ping
    start slurmd /usr/sbin/slurmd -D -f "$SLURM_CONF" -N localhost
    wait_for 60 "the node" sh -c "sinfo -h -o %T | grep -qx idle"
    echo "slurm_local.sh: cluster up in $DIR (accounting: $([ "$ACCOUNTING" = 1 ] && echo slurmdbd || echo none))"
}

[ "${1:-}" = run ] || usage
shift
while [ $# -gt 0 ]; do
    case $1 in
        --accounting) ACCOUNTING=1; shift ;;
        --) shift; break ;;
        *) usage ;;
    esac
done
[ $# -gt 0 ] || usage
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
up
export DGGGAN_SLURM_ACCOUNTING=$ACCOUNTING
"$@"
