"""Reference timings of two GPL phase-retrieval tools (PyNX, cuphaser) on their CPU paths.

Benchmark comparators only: neither tool is a dependency of spibatch, and none of their code
is in it.  benchmarks/phasing_refs_env.sh installs both.  This file imports neither spibatch
nor anything outside NumPy + the tool, so it runs under either tool's interpreter:

    PYNX_PU=cpu /usr/bin/python3 benchmarks/phasing_refs.py --tool pynx --size 128 --repeats 5
    /opt/cuphaser-venv/bin/python benchmarks/phasing_refs.py --tool cuphaser --size 128 --repeats 5

Pin threads with OMP_NUM_THREADS=2 (and friends) in the environment, or with --threads 2, which
sets OMP/OPENBLAS/MKL/NUMEXPR_NUM_THREADS before NumPy is imported.

Test case (the same for both tools, from --seed): a random compact positive object about N/4
across (an ellipsoid with random semi-axes 0.85-1.15 x N/8, filled with smoothed random density)
centred in an N^3 box; its |FFT|^2 scaled to --photons photons in all, with Poisson noise, as the
measured intensity; a beam-stop hole of radius max(2, N/32) voxels around q=0 marked unmeasured;
a loose spherical support (largest semi-axis + 3 voxels); a random start inside the support.

Timed, for the tool's own CPU path, as its users apply it, in ms per iteration: the median over
--repeats runs of --iters iterations each (divided by --iters), after one warm-up run:
one HIO (beta 0.9), one ER, one RAAR (beta 0.9) iteration, and one shrink-wrap support update
(Gaussian smoothing of sigma --sigma voxels + threshold).  Prints one JSON line on stdout;
everything the tools print goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tool", choices=("pynx", "cuphaser"), required=True)
    p.add_argument("--size", type=int, default=128, help="box edge N (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per operator (median reported)")
    p.add_argument("--iters", type=int, default=None,
                   help="iterations per timed run (default 10 for N<=64, 5 for N<=128, else 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="set OMP/OPENBLAS/MKL/NUMEXPR_NUM_THREADS to this before importing NumPy")
    p.add_argument("--fft-workers", type=int, default=1,
                   help="pynx only: scipy.fft workers around the timed calls (PyNX's CPU operators call "
                        "scipy.fft without workers, i.e. 1 thread: the default keeps that)")
    p.add_argument("--sigma", type=float, default=3.0,
                   help="shrink-wrap smoothing sigma in voxels (PyNX SupportUpdate's default 3)")
    p.add_argument("--threshold", type=float, default=0.2,
                   help="pynx: SupportUpdate threshold_relative (rms method, PyNX's default 0.2)")
    p.add_argument("--complex", action="store_true",
                   help="cuphaser only: real_valued = false (complex64 iterate, like PyNX) instead of "
                        "cuphaser's default real float32 iterate")
    p.add_argument("--photons", type=float, default=1e9, help="total photons in the intensity")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def make_case(n: int, photons: float, seed: int):
    """Centred arrays (object centre and q=0 both at index n//2): object, intensity, mask, support."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = n // 2
    ax = np.arange(n, dtype=np.float64) - c
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)

    # smoothed random density (Gaussian of 1.5 voxels, by FFT)
    q = np.fft.fftfreq(n)
    qz, qy, qx = np.meshgrid(q, q, np.fft.rfftfreq(n), indexing="ij", sparse=True)
    g = np.exp(-2 * np.pi ** 2 * 1.5 ** 2 * (qx ** 2 + qy ** 2 + qz ** 2))
    noise = np.fft.irfftn(np.fft.rfftn(rng.standard_normal((n, n, n))) * g, s=(n, n, n), axes=(0, 1, 2))
    noise /= noise.std()
    axes = n / 8 * rng.uniform(0.85, 1.15, size=3)
    r = np.sqrt((z / axes[0]) ** 2 + (y / axes[1]) ** 2 + (x / axes[2]) ** 2)
    edge = np.clip((1.0 - r) * axes.min(), 0.0, 1.0)          # ~1-voxel soft edge
    obj = np.clip(1.0 + 0.4 * noise, 0.1, None) * edge
    del noise, r, edge

    intens = np.abs(np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(obj)))) ** 2
    intens *= photons / intens.sum()
    intens = rng.poisson(intens).astype(np.float32)

    rq = np.sqrt(z ** 2 + y ** 2 + x ** 2)
    beamstop = max(2, n // 32)
    mask = rq <= beamstop                                      # True = unmeasured
    support = (rq <= axes.max() + 3).astype(np.int8)
    start = (support * rng.random((n, n, n))).astype(np.float32)
    return {"obj": obj.astype(np.float32), "intens": intens, "mask": mask, "support": support,
            "start": start, "beamstop": beamstop}


def median_ms(step, iters: int, repeats: int) -> float:
    """step(k) does k iterations.  One warm-up run, then the median of repeats runs, per iteration."""
    step(iters)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(iters)
        times.append((time.perf_counter() - t0) / iters * 1e3)
    return round(statistics.median(times), 3)


def run_pynx(case, args):
    os.environ.setdefault("PYNX_PU", "cpu")
    import numpy as np
    import scipy.fft
    from numpy.fft import fftshift  # case arrays are centred: PyNX wants the origin at index 0

    try:
        import pynx.version
        from pynx.cdi import CDI, ER, HIO, RAAR, SupportUpdate
    except ImportError as e:
        raise SystemExit(f"PyNX not importable from {sys.executable} ({e}): use Debian's /usr/bin/python3 "
                         f"after benchmarks/phasing_refs_env.sh") from None

    if HIO.__module__ != "pynx.cdi.cpu_operator":
        raise SystemExit(f"PyNX picked {HIO.__module__}, not its CPU operators: set PYNX_PU=cpu")
    cdi = CDI(fftshift(case["intens"]), support=fftshift(case["support"]),
              obj=fftshift(case["start"]).astype(np.complex64), mask=fftshift(case["mask"]).astype(np.int8))
    state = {"cdi": cdi}

    def op(make):
        def step(k):
            with scipy.fft.set_workers(args.fft_workers):
                state["cdi"] = make(k) * state["cdi"]
        return step

    def support_step(k):
        with scipy.fft.set_workers(args.fft_workers):
            for _ in range(k):
                state["cdi"] = SupportUpdate(threshold_relative=args.threshold, smooth_width=args.sigma,
                                             method="rms") * state["cdi"]

    res = {
        "hio_ms": median_ms(op(lambda k: HIO(beta=0.9) ** k), args.iters, args.repeats),
        "er_ms": median_ms(op(lambda k: ER() ** k), args.iters, args.repeats),
        "raar_ms": median_ms(op(lambda k: RAAR(beta=0.9) ** k), args.iters, args.repeats),
        "shrinkwrap_ms": median_ms(support_step, args.iters, args.repeats),
    }
    cdi = state["cdi"]
    supp = int(cdi.get_support().sum())
    dtype = str(cdi.get_obj().dtype)
    notes = (f"PyNX {pynx.version.__version__} CPU operators (pynx.cdi.cpu_operator, PYNX_PU="
             f"{os.environ.get('PYNX_PU')}): HIO(beta=0.9)**n, ER()**n, RAAR(beta=0.9)**n applied to a CDI "
             f"object; object {dtype}, scipy.fft fftn/ifftn (norm=ortho) with workers={args.fft_workers} "
             f"(PyNX passes no workers: 1 FFT thread whatever OMP_NUM_THREADS says), NumPy elementwise "
             f"projections with temporaries. Shrink-wrap = SupportUpdate(threshold_relative={args.threshold}, "
             f"smooth_width={args.sigma}, method='rms'): fftshift + scipy.ndimage.gaussian_filter (1 thread) "
             f"+ threshold; support now {supp} voxels. Beam stop: iobs masked (mask>0 -> iobs=-1.05e38).")
    extra = {"dtype": dtype, "fft_workers": args.fft_workers, "numpy": np.__version__,
             "scipy": scipy.__version__, "support_voxels": supp}
    return pynx.version.__version__, res, notes, extra


def run_cuphaser(case, args, workdir):
    import importlib.metadata

    import numpy as np
    try:
        import mrcfile
        from cuphaser import phaser as cp
    except ImportError as e:
        raise SystemExit(f"cuphaser not importable from {sys.executable} ({e}): use /opt/cuphaser-venv/bin/python "
                         f"after benchmarks/phasing_refs_env.sh") from None

    if cp.CUDA:
        raise SystemExit("cuphaser found CuPy: this script times its NumPy path only")
    intens = case["intens"].copy()
    intens[case["mask"]] = -1.0                 # cuphaser: obs_mag < 0 is unmeasured (calc kept)
    mrcfile.new(os.path.join(workdir, "intens.ccp4"), data=intens, overwrite=True).close()
    mrcfile.new(os.path.join(workdir, "support.ccp4"), data=case["support"], overwrite=True).close()
    config = os.path.join(workdir, "config.ini")
    with open(config, "w") as f:
        f.write(f"[parameters]\nsize = {args.size}\npoint_group = 1\n\n"
                f"[files]\nintens_fname = intens.ccp4\nsupport_fname = support.ccp4\noutput_prefix = out\n\n"
                f"[algorithm]\nalgorithm = 1 HIO\nbeta = 0.9\nreal_valued = {not args.complex}\n")
    phas = cp.Phaser(config, fixed_seed=True)
    proj = phas.proj

    def algo(method):
        def step(k):
            for _ in range(k):
                method()
        return step

    res = {
        "hio_ms": median_ms(algo(phas.HIO_algorithm), args.iters, args.repeats),
        "er_ms": median_ms(algo(phas.ER_algorithm), args.iters, args.repeats),
        "raar_ms": median_ms(algo(phas.RAAR_algorithm), args.iters, args.repeats),
    }
    dtype = str(phas.state.iterate.dtype)
    fdtype = str(np.fft.fftn(phas.state.iterate[0, :2, :2, :2]).dtype)
    support0, num_supp = proj.support.copy(), int(proj.num_supp)

    # cuphaser's support update: Projection.update_support(model, blur, threshold|num_vox|frac_total).
    # Its own pipeline calls it (algorithm local_variation = true) inside every direct-space projection
    # with num_vox = the support size: a constant-volume shrink-wrap.  That is what shrinkwrap_ms times.
    def numvox_step(k):
        for _ in range(k):
            proj.update_support(phas.state.iterate, args.sigma, num_vox=num_supp)
    res["shrinkwrap_ms"] = median_ms(numvox_step, args.iters, args.repeats)
    supp_numvox = int(proj.support.sum())

    # the same with an absolute threshold (classic shrink-wrap; not reachable from cuphaser's config)
    proj.support = support0.copy()
    blurred = np.abs(phas.state.iterate[0])
    proj.gaussian_blur(blurred, args.sigma)
    thr = float(args.threshold * np.sqrt((blurred[support0 > 0] ** 2).mean()))   # like PyNX's rms rule
    def threshold_step(k):
        for _ in range(k):
            proj.update_support(phas.state.iterate, args.sigma, threshold=thr)
    thr_ms = median_ms(threshold_step, args.iters, args.repeats)
    supp_thr = int(proj.support.sum())

    version = importlib.metadata.version("cuphaser")
    notes = (f"cuphaser {version} NumPy path (CUDA=False, PYFFTW={cp.PYFFTW}): Phaser from a config.ini + "
             f"ccp4 files as its users set it up; HIO/ER/RAAR = Phaser.HIO_algorithm/ER_algorithm/"
             f"RAAR_algorithm() (beta 0.9; run_iteration's min-error bookkeeping not included); iterate "
             f"{dtype} ({'complex, real_valued=false' if args.complex else 'real, cuphaser default real_valued=true'}), "
             f"numpy.fft fftn/ifftn -> {fdtype}, 1 thread (numpy's pocketfft; pyfftw not installed). "
             f"Shrink-wrap = Projection.update_support(iterate, blur={args.sigma}, num_vox=num_supp): the "
             f"'local_variation' constant-volume support update (FFT Gaussian blur + full argsort + "
             f"recentring with np.indices/np.roll); with local_variation on it runs in every direct "
             f"projection (1x per HIO/ER, 2x per RAAR). Its threshold= variant: extra.shrinkwrap_threshold_ms. "
             f"The `cuphaser` CLI itself does not run without CuPy (recon.py calls "
             f"np.get_default_memory_pool/np.cuda on numpy).")
    extra = {"dtype": dtype, "fft_dtype": fdtype, "numpy": np.__version__,
             "shrinkwrap_threshold_ms": thr_ms, "support_voxels_numvox": supp_numvox,
             "support_voxels_threshold": supp_thr}
    return version, res, notes, extra


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        for var in THREAD_VARS:
            os.environ[var] = str(args.threads)
    if args.iters is None:
        args.iters = 10 if args.size <= 64 else 5 if args.size <= 128 else 2
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count())

    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):   # the tools print banners on import and setup
        t0 = time.perf_counter()
        case = make_case(args.size, args.photons, args.seed)
        setup_s = time.perf_counter() - t0
        if args.tool == "pynx":
            version, res, notes, extra = run_pynx(case, args)
        else:
            with tempfile.TemporaryDirectory(prefix="phasing_refs_") as workdir:
                version, res, notes, extra = run_cuphaser(case, args, workdir)
    extra.update({"iters": args.iters, "repeats": args.repeats, "beamstop_radius": case["beamstop"],
                  "python": sys.executable, "case_setup_s": round(setup_s, 2),
                  "thread_env": {v: os.environ.get(v) for v in THREAD_VARS if os.environ.get(v)}})
    line = {"tool": args.tool, "version": version, "size": args.size, "threads": threads, **res,
            "notes": notes, "extra": extra}
    out.write(json.dumps(line) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
