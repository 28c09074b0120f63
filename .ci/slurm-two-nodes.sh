#!/usr/bin/env bash
# A second Slurm cluster on this machine with two nodes, n1 and n2: two slurmd daemons (`slurmd -N`), one
# CPU each, on their own ports, beside the single-node CI cluster (.ci/slurm-up.sh: other ports, other state).
# Commands reach it with SLURM_CONF=/etc/slurm-two-nodes/slurm.conf.  For multi-node batch jobs and MPI
# started by mpirun across the two "nodes" (its orted on each by srun), and `srun --mpi=pmix` across them (the
# HPC-mode EMC job's launch): each node's TmpFS is a folder of its own (TmpFS=...-%n), where its slurmstepd
# makes the step's PMIx directory spmix_appdir_<uid>_<job>.<step>; with the one /tmp of this host the second
# node's would collide with the first's ("File exists"), as real nodes' own /tmp never do.
#   .ci/slurm-two-nodes.sh up | down        (root; Debian's slurm-wlm + munge)
set -euo pipefail
source "$(dirname "$0")/slurm-common.sh"
DIR=/etc/slurm-two-nodes
CONF=$DIR/slurm.conf
STATE=/var/spool/slurm-two-nodes
export SLURM_CONF=$CONF

if [[ ${1:-} == down ]]; then
    stop_pidfiles "$STATE"/slurmd-n1.pid "$STATE"/slurmd-n2.pid "$STATE"/slurmctld.pid
    exit 0
fi
[[ ${1:-} == up ]] || { echo "usage: $0 up|down" >&2; exit 2; }

mkdir -p "$DIR" "$STATE"/ctld "$STATE"/n1 "$STATE"/n2 "$STATE"/log "$STATE"/tmp-n1 "$STATE"/tmp-n2
{
    cat <<CONF_EOF
# written by spibatch .ci/slurm-two-nodes.sh
ClusterName=spibatch-two-nodes
SlurmctldPort=6917
SlurmdPort=6918
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
MpiDefault=none
TmpFS=$STATE/tmp-%n
CONF_EOF
    slurm_common_conf
    cat <<CONF_EOF
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=1
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=1
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF_EOF
} > "$CONF"

start_munge

alive "$STATE"/slurmctld.pid || /usr/sbin/slurmctld -f "$CONF"
for node in n1 n2; do
    alive "$STATE/slurmd-$node.pid" || /usr/sbin/slurmd -f "$CONF" -N "$node"
done

for _ in $(seq 1 60); do
    if [[ $(sinfo -h -o '%T %D' 2>/dev/null) =~ ^idle\ 2 ]]; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "slurm-two-nodes: the nodes did not become idle in 60 s; see $STATE/log/" >&2
sinfo -R >&2 || true
exit 1
