#!/usr/bin/env bash
# Build Dragonfly (PyPI dragonfly-spi, GPL) in a throw-away venv, as a reference tool for
# tests/test_dragonfly_compat.py and the benchmarks. Never a dependency of spibatch.
#
#   bash benchmarks/dragonfly_env.sh [VENV]        # default VENV: /opt/dragonfly-venv
#   SPIBATCH_DRAGONFLY=VENV/bin pytest -m dragonfly
#
# Needs root for apt-get (Debian/Ubuntu). Dragonfly is built from source (C + OpenMP + MPI):
# about 5 minutes on 2 cores. Its dragonfly.emc imports mpi4py, and its build calls mpicc,
# so OpenMPI is needed even for a single-process run.
set -euo pipefail

venv="${1:-/opt/dragonfly-venv}"
python="${PYTHON:-python3}"
dragonfly_version="0.1.0"      # the version that wrote shared/datasets

packages=(libgsl-dev libhdf5-dev libopenmpi-dev openmpi-bin pkg-config)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${packages[@]}" >/dev/null
fi

start=$(date +%s)
"$python" -m venv "$venv"
"$venv/bin/pip" install -q "dragonfly-spi==${dragonfly_version}" mpi4py
# the import that dragonfly.emc does first: fails here, not in the test, if MPI is missing
"$venv/bin/python" -c "import dragonfly.recon"
"$venv/bin/dragonfly.emc" -h >/dev/null
echo "dragonfly_env: $venv ready in $(( $(date +%s) - start )) s ($venv/bin/dragonfly.emc)"
