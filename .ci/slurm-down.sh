#!/usr/bin/env bash
# Stop the single-node Slurm cluster .ci/slurm-up.sh started, by the daemons' pid files.
set -uo pipefail
for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    if [[ -f $pidfile ]]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null && for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$pidfile"
    fi
done
