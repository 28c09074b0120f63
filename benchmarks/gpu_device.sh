#!/usr/bin/env bash
# The GPU checks of issue 5 in one short call on a lent device (H100 / H200), in two steps:
#
#   bash benchmarks/gpu_device.sh prepare   # HERE (network): wheels, the PyCUDA sdist and the data into .gpu-carry/
#   bash benchmarks/gpu_device.sh run       # THERE, with .gpu-carry carried: tests + benchmarks into $OUT
#
# The device's python3 (3.12) has CuPy 14 (CUDA 13), numba, scipy, h5py, typer, pytest and nvcc but
# not pydantic nor PyCUDA.  PyCUDA has no binary wheel: its sdist is built there, against that CUDA,
# in the background while the CuPy tests and benchmarks run; then the PyCUDA tests run, and the
# benchmarks again with both runtimes side by side.  Every log and JSON file lands in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu-carry

prepare() {
    set -e
    rm -rf "$CARRY" && mkdir -p "$CARRY/whl" "$CARRY/sdist" "$CARRY/data/dragonfly-medium" "$CARRY/data/dragonfly-small"
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$CARRY/whl" pydantic pytools mako platformdirs
    rm -f "$CARRY"/whl/typing_extensions-*.whl           # the device has it; one copy only
    python3 -m pip download -q --no-deps --no-binary pycuda -d "$CARRY/sdist" pycuda
    local shared=${SPIBATCH_SHARED_DATASETS:-../shared/datasets}
    cp "$shared"/dragonfly-medium/{photons.emc,det_sim.h5} "$CARRY/data/dragonfly-medium/"
    cp "$shared"/dragonfly-small/{photons.emc,det_sim.h5} "$CARRY/data/dragonfly-small/"
    du -sh "$CARRY"
}

build_pycuda() {
    # PyCUDA from its sdist against this machine's CUDA: configure.py names the toolkit and the driver
    # library (libcuda.so, linked through /tmp/cudadrv when only the driver's libcuda.so.1 is there);
    # without cuRAND (we use none; its headers are not in every toolkit).
    local target=$1 src=/tmp/pycuda-src root
    rm -rf "$src" && mkdir -p "$src" /tmp/cudadrv
    tar xzf "$CARRY"/sdist/pycuda-*.tar.gz -C "$src" --strip-components=1
    root=${CUDA_ROOT:-$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")}
    [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDA_ROOT:-}" ] && root=/usr/local/cuda
    local driver
    driver=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
    for dir in ${LD_LIBRARY_PATH//:/ } /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
        [ -z "$driver" ] && [ -e "$dir/libcuda.so.1" ] && driver=$dir/libcuda.so.1
    done
    [ -n "$driver" ] && ln -sf "$driver" /tmp/cudadrv/libcuda.so
    (cd "$src" && python3 configure.py --cuda-root="$root" --no-cuda-enable-curand \
        --cudadrv-lib-dir="/tmp/cudadrv,$root/lib64,$root/lib64/stubs,$root/lib" >/dev/null &&
     PATH=$root/bin:$PATH python3 -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target "$target" .)
}

run() {
    : "${OUT:?run on the device, where \$OUT is set}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$CARRY"/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 SPIBATCH_SHARED_DATASETS=$PWD/$CARRY/data
    command -v nvcc >/dev/null || export PATH=$PATH:/usr/local/cuda/bin
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
    nvcc --version | tail -2 | tee -a "$OUT/device.txt"
    (build_pycuda /tmp/pycuda >"$OUT/pycuda_build.log" 2>&1; echo $? >/tmp/pycuda.rc) &
    local tests="tests/test_gpu_emc.py tests/test_gpu_phasing.py tests/test_gpu_device.py tests/test_cuda_launchers.py"
    python3 -m pytest -p no:cacheprovider -q -rs $tests -k "not pycuda" 2>&1 | tee "$OUT/tests_cupy.log"
    python3 benchmarks/gpu_bench.py --data "$CARRY/data" --out "$OUT/bench_cupy.json" --runtimes cupy \
        2>&1 | tee "$OUT/bench_cupy.log"
    wait
    if [ "$(cat /tmp/pycuda.rc)" = 0 ]; then
        export PYTHONPATH=/tmp/pycuda:$PYTHONPATH
        python3 -m pytest -p no:cacheprovider -q -rs $tests -k "pycuda" 2>&1 | tee "$OUT/tests_pycuda.log"
        python3 benchmarks/gpu_bench.py --data "$CARRY/data" --out "$OUT/bench_side_by_side.json" \
            --runtimes cupy,pycuda --parts medium,phasing --sizes 256 2>&1 | tee "$OUT/bench_side_by_side.log"
    else
        echo "PyCUDA did not build from the sdist here: see pycuda_build.log" | tee "$OUT/tests_pycuda.log"
        tail -30 "$OUT/pycuda_build.log"
    fi
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    build-pycuda) build_pycuda "${2:?target folder}" ;;     # alone, e.g. to check the build on a CPU machine
    *) echo "usage: bash benchmarks/gpu_device.sh prepare|run|build-pycuda TARGET" >&2; exit 2 ;;
esac
