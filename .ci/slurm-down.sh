#!/usr/bin/env bash
# Stop the single-node Slurm cluster .ci/slurm-up.sh started, by the daemons' pid files.
set -uo pipefail
source "$(dirname "$0")/slurm-common.sh"
stop_pidfiles /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid
