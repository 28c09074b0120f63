#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (root; Debian's slurm-wlm + munge), idempotent.
# Used by .ci/run and by the tests' session fixture (tests/conftest.py: slurm_cluster).
# Stop it with .ci/slurm-down.sh (by the daemons' pid files).
set -euo pipefail
source "$(dirname "$0")/slurm-common.sh"
CONF=/etc/slurm/slurm.conf
MARK="# written by spibatch .ci/slurm-up.sh"
CPUS=$(nproc)

if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-up: $CONF exists and is not ours; leaving it alone" >&2
else
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    {
        cat <<CONF_EOF
$MARK
ClusterName=spibatch-ci
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=pmi2
CONF_EOF
        slurm_common_conf
        cat <<CONF_EOF
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF_EOF
    } > "$CONF"
fi

start_munge

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
