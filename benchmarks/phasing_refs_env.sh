#!/usr/bin/env bash
# Install two GPL phase-retrieval tools as benchmark comparators for benchmarks/phasing_refs.py.
# References only: never a dependency of spibatch, and none of their code goes into it.
#
#   bash benchmarks/phasing_refs_env.sh [VENV]      # default VENV: /opt/cuphaser-venv
#   PYNX_PU=cpu /usr/bin/python3 benchmarks/phasing_refs.py --tool pynx --size 128
#   VENV/bin/python benchmarks/phasing_refs.py --tool cuphaser --size 128
#
# - PyNX: Debian's python3-pynx from bookworm-backports (the PyPI name "pynx" is an unrelated
#   nginx tool), used through Debian's /usr/bin/python3 with PYNX_PU=cpu.  Installed with
#   --no-install-recommends: about 220 packages (Qt5, clang-15, HDF5, PyOpenCL/pocl, ...) instead
#   of about 440 with recommends (systemd, avahi, LLVM, ...).  It removes nothing.
# - cuphaser: PyPI's cuphaser in its own venv; without CuPy/GPU it runs its NumPy path.
#
# Needs root for apt-get (Debian 12).  Idempotent: whatever is already there is skipped.
set -euo pipefail

venv="${1:-/opt/cuphaser-venv}"
python="${PYTHON:-python3}"
backports_list=/etc/apt/sources.list.d/bookworm-backports.list
start=$(date +%s)

# --- PyNX (Debian, bookworm-backports) --------------------------------------------------------
if dpkg -s python3-pynx >/dev/null 2>&1; then
    echo "phasing_refs_env: python3-pynx already installed, skipped"
else
    export DEBIAN_FRONTEND=noninteractive
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" > "$backports_list"
    fi
    apt-get update -qq
    # pynx/bookworm-backports, not -t bookworm-backports: -t takes every dependency from backports
    # where it has a newer one (it upgrades libwebp7 and friends); this takes from backports only
    # python3-pynx and the five dependencies that need it (fabio, nxtomo, pyunitsystem, pyvkfft,
    # tomoscan).  python3-venv: for the cuphaser venv when $python is Debian's python3.
    apt-get install -y -qq --no-install-recommends python3-pynx/bookworm-backports python3-venv >/dev/null
fi
# pynx has no pynx.__version__; pynx.version has it.  Importing pynx.cdi prints a PU banner: dropped
PYNX_PU=cpu /usr/bin/python3 -c "import pynx.cdi, pynx.version; print('phasing_refs_env: PyNX', pynx.version.__version__)" \
    | grep -v "^PyNX processing unit"

# --- cuphaser (PyPI, own venv) -----------------------------------------------------------------
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import cuphaser" >/dev/null 2>&1; then
    echo "phasing_refs_env: cuphaser already in $venv, skipped"
else
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q cuphaser
fi
"$venv/bin/python" -c "import importlib.metadata as m; print('phasing_refs_env: cuphaser', m.version('cuphaser'))"

echo "phasing_refs_env: ready in $(( $(date +%s) - start )) s (PyNX: /usr/bin/python3, cuphaser: $venv/bin/python)"
