#!/usr/bin/env bash
# `spibatch bench` on a lent 16-core H200 machine, in one short call (issue 14), in two steps:
#
#   bash benchmarks/bench_device.sh prepare   # HERE (registries reachable): wheels, Slurm's .debs, the data sets
#                                             # into .bench-carry/ (~40 MB; .git/info/exclude'd)
#   bash benchmarks/bench_device.sh run       # THERE (the device tool's run, carry [".bench-carry"],
#                                             # timeout_s 560): results into $OUT
#
# What `run` does, each step under its own time limit (a matrix stopped by its limit keeps and reports the points
# it measured) so that the whole fits in ~9 minutes:
#   1. installs the wheels (Parsl, pydantic, mpich for mpirun, mrcfile) into /tmp/site; this machine's kernel
#      rates for the model (python -m spibatch.bench.kernels, ~1 min);
#   2. CPU matrix on the local site: 1, 2, 4, 8, 16 workers x HPC (mpirun) and HTC, the medium data set
#      (benchmarks/bench/device.yaml), with the model calibrated on 1 worker and checked on the rest (~5 min);
#   3. GPU points: device: gpu, 1 worker, HPC and HTC (benchmarks/bench/device-gpu.yaml), if CuPy sees the GPU;
#   4. a single-node Slurm from the carried Debian .debs (unpacked under /opt/slurmroot, not over /), then the same
#      matrix on it at 1, 4 and 16 workers, if it starts within a minute and time is left.
# $OUT gets: device.txt (nvidia-smi, lscpu, what ran or was skipped and why), log.txt, and bench_results.tgz
# (bench.json, bench.md and report.html of each matrix: the tables and plots).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=.bench-carry
START=$(date +%s)
BUDGET=${BENCH_BUDGET_S:-530}          # seconds for everything; each step gets what is left

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

prepare() {
    set -e
    grep -qxF "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> "$(git rev-parse --git-path info/exclude)"
    rm -rf "$CARRY" && mkdir -p "$CARRY/whl" "$CARRY/debs" "$CARRY/data/dragonfly-medium" "$CARRY/data/dragonfly-small"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/whl" \
        parsl==2026.10.26 dill tblib typeguard pyzmq setproctitle pydantic==2.14.4 pydantic-core==2.50.5 \
        annotated-types typing-inspection mrcfile mpich
    (cd "$CARRY/debs" && apt-get download slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge libmunge2 \
        libpmix2 libhwloc15 libjson-c5 libjwt0 libhttp-parser2.9 libyaml-0-2 liblua5.3-0 libevent-core-2.1-7 \
        libevent-pthreads-2.1-7 2>/dev/null)
    local shared=${SPIBATCH_SHARED_DATASETS:-../shared/datasets}
    cp "$shared"/dragonfly-medium/{photons.emc,det_sim.h5} "$CARRY/data/dragonfly-medium/"
    cp "$shared"/dragonfly-small/{photons.emc,det_sim.h5,intensities.bin} "$CARRY/data/dragonfly-small/"
    du -sh "$CARRY"
}

bench() {   # bench FILE OUTDIR LIMIT [more args]: python -m spibatch.bench under a time limit
    local file=$1 out=$2 limit=$3
    shift 3
    (( limit > 20 )) || { echo "skipped $file: no time left" | tee -a "$OUT/device.txt"; return 1; }
    echo "== $file -> $out ($limit s, load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/device.txt"
    timeout --signal=INT "$limit" python3 -m spibatch.bench "$file" --out "$out" "$@" 2>&1 | tee -a "$OUT/log.txt"
    echo "   exit ${PIPESTATUS[0]}" | tee -a "$OUT/device.txt"
}

slurm_up() {   # Debian's Slurm + munge unpacked under /opt/slurmroot, a one-node cluster of this machine's CPUs
    local root=/opt/slurmroot lib=/opt/slurmroot/usr/lib/x86_64-linux-gnu
    mkdir -p $root && for f in "$CARRY"/debs/*.deb; do dpkg -x "$f" $root; done
    export PATH=$root/usr/bin:$root/usr/sbin:$PATH LD_LIBRARY_PATH=$lib:$lib/slurm-wlm:${LD_LIBRARY_PATH:-}
    mkdir -p /etc/slurm /etc/munge /run/munge /var/lib/munge /var/log/munge /var/spool/slurmctld /var/spool/slurmd \
        /var/log/slurm
    [ -f /etc/munge/munge.key ] || { head -c 1024 /dev/urandom > /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    munged --force --key-file=/etc/munge/munge.key --socket=/run/munge/munge.socket.2 \
        --pid-file=/run/munge/munged.pid --log-file=/var/log/munge/munged.log || return 1
    cat > /etc/slurm/slurm.conf <<EOF
ClusterName=spibatch-device
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
PluginDir=$lib/slurm-wlm
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmi2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    slurmctld -c && slurmd -N localhost || return 1
    for _ in $(seq 1 30); do
        sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed)' && { sinfo; return 0; }
        sleep 2
    done
    return 1
}

run() {
    : "${OUT:?run on the device, where \$OUT is set}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$CARRY"/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
    export SPIBATCH_SHARED_DATASETS=$PWD/$CARRY/data OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | head -20; free -g | head -2
      command -v mpirun; python3 -c "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])"; } \
        > "$OUT/device.txt" 2>&1
    local results=/tmp/bench-results rates=/tmp/bench-results/rates.json
    mkdir -p $results
    B=benchmarks/bench
    timeout 120 python3 -m spibatch.bench.kernels $rates 2>&1 | tee -a "$OUT/log.txt"
    bench $B/device.yaml $results/cpu $(( $(left) - 200 )) --site $B/device-local.yaml --rates $rates
    if python3 -c "import cupy; cupy.cuda.runtime.getDeviceCount()" 2>/dev/null; then
        bench $B/device-gpu.yaml $results/gpu $(( $(left) - 130 )) --site $B/device-local.yaml \
            --rates $rates
    else
        echo "skipped GPU points: CuPy sees no GPU" | tee -a "$OUT/device.txt"
    fi
    if (( $(left) > 150 )) && timeout 90 bash -c "$(declare -f slurm_up); CARRY=$CARRY slurm_up" >>"$OUT/device.txt" 2>&1; then
        local root=/opt/slurmroot/usr
        export PATH=$root/bin:$root/sbin:$PATH LD_LIBRARY_PATH=$root/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu/slurm-wlm
        sed 's/workers: \[1, 2, 4, 8, 16\]/workers: [1, 4, 16]/' $B/device.yaml > /tmp/device-slurm-matrix.yaml
        sed 's/^slurm: {/slurm: {mpi_options: "--mpi=pmi2 --overlap", /' $B/device-slurm.yaml > /tmp/device-slurm.yaml
        bench /tmp/device-slurm-matrix.yaml $results/slurm $(( $(left) - 15 )) --site /tmp/device-slurm.yaml \
            --rates $rates
    else
        echo "skipped Slurm: it did not start here (or no time left); see above" | tee -a "$OUT/device.txt"
    fi
    (cd $results && tar czf "$OUT/bench_results.tgz" rates.json */bench.json */bench.md */report.html 2>/dev/null)
    for m in cpu gpu slurm; do [ -f $results/$m/bench.md ] && cp $results/$m/bench.md "$OUT/bench_$m.md"; done
    echo "done in $(( $(date +%s) - START )) s" | tee -a "$OUT/device.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash benchmarks/bench_device.sh prepare|run" >&2; exit 2 ;;
esac
