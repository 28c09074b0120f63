#!/usr/bin/env bash
# A second Slurm cluster on this machine with two nodes, n1 and n2, that are hosts of their own on a network:
# each node's slurmd (and so every job step it starts) runs in a network namespace of its own (an address,
# a loopback and a port space of its own, one veth into a bridge) and a UTS namespace of its own (hostname
# n1, n2).  The filesystem stays shared, as a cluster's shared filesystem is.  What crosses between the nodes
# and the controller (slurmctld, the driver, Parsl's interchange: this host, 10.213.77.1 on the bridge) goes
# over that network: Parsl's worker pools must find the interchange's address, MPI ranks on the two nodes
# talk over TCP (not shared memory), as between real machines.  Beside the single-node CI cluster
# (.ci/slurm-up.sh: other ports, other state).  Commands reach it with SLURM_CONF=/etc/slurm-two-nodes/slurm.conf.
# Each node's TmpFS is a folder of its own (TmpFS=...-%n), where its slurmstepd makes the step's PMIx
# directory, as real nodes' own /tmp.
#   .ci/slurm-two-nodes.sh up | down        (root; Debian's slurm-wlm + munge, iproute2)
set -eEuo pipefail      # -E: the ERR trap below holds inside functions too
source "$(dirname "$0")/slurm-common.sh"
DIR=/etc/slurm-two-nodes
CONF=$DIR/slurm.conf
STATE=/var/spool/slurm-two-nodes
NET=10.213.77            # the bridge's /24: the controller .1, node n<i> .1<i>
BRIDGE=spibatch-br
NODES=(n1 n2)
export SLURM_CONF=$CONF

netns() { echo "spibatch-$1"; }      # a node's network namespace, and the host end of its veth

network_down() {
    local node ns pid
    for node in "${NODES[@]}"; do
        ns=$(netns "$node")
        if [[ -e /run/netns/$ns ]]; then
            # what still runs in the node (a job's processes) goes with it: only this namespace's
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        fi
        # the veth first (both ends go): a namespace whose last process is still exiting outlives its name,
        # and with it the host end, whose name the next `up` takes
        ip link del "$ns" 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

network_up() {
    local i node ns controller
    controller=$(hostname -s)
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in "${!NODES[@]}"; do
        node=${NODES[$i]}
        ns=$(netns "$node")
        ip netns add "$ns"
        ip link add "$ns" type veth peer name eth0 netns "$ns"
        ip link set "$ns" master "$BRIDGE" up
        ip -n "$ns" addr add "$NET.1$((i + 1))/24" dev eth0
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
        # the node's /etc/hosts (bound over /etc/hosts in its mount namespace, below): names, no DNS
        mkdir -p "/etc/netns/$ns"
        {
            echo "127.0.0.1 localhost"
            echo "$NET.1 $controller"
            for j in "${!NODES[@]}"; do echo "$NET.1$((j + 1)) ${NODES[$j]}"; done
        } > "/etc/netns/$ns/hosts"
    done
}

cluster_down() {
    stop_pidfiles "$STATE"/slurmd-n1.pid "$STATE"/slurmd-n2.pid "$STATE"/slurmctld.pid
    network_down
}

if [[ ${1:-} == down ]]; then
    cluster_down
    exit 0
fi
[[ ${1:-} == up ]] || { echo "usage: $0 up|down" >&2; exit 2; }
command -v ip >/dev/null || { echo "slurm-two-nodes: needs iproute2's ip (apt-get install iproute2)" >&2; exit 1; }

# always from scratch: whatever an earlier (killed, failed, older) cluster left goes first, daemons included
cluster_down
trap 'trap - ERR; echo "slurm-two-nodes: up failed; taking down what it made" >&2; cluster_down' ERR
rm -rf "$STATE"/ctld      # no job of an earlier cluster recovered (a requeued one would hold the nodes)
mkdir -p "$DIR" "$STATE"/ctld "$STATE"/n1 "$STATE"/n2 "$STATE"/log "$STATE"/tmp-n1 "$STATE"/tmp-n2
network_up
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
    # a node cut off is found in 20-30 s (tests/test_slurm_two_nodes.py cuts one)
    slurm_common_conf "$(hostname -s)($NET.1)" 20
    for i in "${!NODES[@]}"; do
        echo "NodeName=${NODES[$i]} NodeHostname=${NODES[$i]} NodeAddr=$NET.1$((i + 1)) Port=17001 CPUs=1"
    done
    cat <<CONF_EOF
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF_EOF
} > "$CONF"

start_munge

/usr/sbin/slurmctld -f "$CONF"
for node in "${NODES[@]}"; do
    # slurmd forks into the background and stays in the node's namespaces, with every step it starts.  Not
    # `ip netns exec`: it mounts a fresh /sys, without the cgroup filesystem slurmd needs.
    nsenter --net="/run/netns/$(netns "$node")" \
        unshare --uts --mount --propagation slave sh -c "hostname $node && mount --bind \
        /etc/netns/$(netns "$node")/hosts /etc/hosts && exec /usr/sbin/slurmd -f $CONF -N $node"
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
cluster_down
exit 1
