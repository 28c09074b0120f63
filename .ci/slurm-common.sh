# Sourced by .ci/slurm-up.sh and .ci/slurm-two-nodes.sh: what their clusters share.

# slurm.conf settings both clusters use (each adds its names, ports, paths, nodes and MpiDefault);
# $1: SlurmctldHost (default localhost), $2: SlurmdTimeout in s (default 30)
slurm_common_conf() {
    echo "SlurmctldHost=${1:-localhost}"
    echo "SlurmdTimeout=${2:-30}"
    cat <<'CONF_EOF'
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
InactiveLimit=0
KillWait=5
CONF_EOF
}

# munge, as the munge user, unless it runs already
start_munge() {
    if ! { [[ -f /run/munge/munged.pid ]] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
        mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
        [[ -f /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    fi
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop the daemons of these pid files, each within 5 s, and remove the files
stop_pidfiles() {
    local pidfile pid
    for pidfile in "$@"; do
        if [[ -f $pidfile ]]; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null && for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            rm -f "$pidfile"
        fi
    done
}
