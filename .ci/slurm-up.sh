#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (root; Debian's slurm-wlm + munge), idempotent.
# Used by .ci/run and by the tests' session fixture (tests/conftest.py: slurm_cluster).
# Stop it with .ci/slurm-down.sh (by the daemons' pid files).
set -euo pipefail
CONF=/etc/slurm/slurm.conf
MARK="# written by spibatch .ci/slurm-up.sh"
CPUS=$(nproc)

if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-up: $CONF exists and is not ours; leaving it alone" >&2
else
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat > "$CONF" <<CONF_EOF
$MARK
ClusterName=spibatch-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=pmi2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF_EOF
fi

# munge, as the munge user
if ! { [[ -f /run/munge/munged.pid ]] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    [[ -f /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
fi

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive /run/slurmctld.pid || /usr/sbin/slurmctld -c
alive /run/slurmd.pid || /usr/sbin/slurmd -N localhost

for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "slurm-up: the node did not become idle in 60 s; see /var/log/slurm/" >&2
sinfo -R >&2 || true
exit 1
