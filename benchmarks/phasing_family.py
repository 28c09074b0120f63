"""A family of phasing test objects, one scorer for every tool, and the table behind BENCHMARKS.md.

    python benchmarks/phasing_family.py --tools limit before auto [--objects blobs-small rod ...]
        [--starts 8] [--scale 1.0] [--out /tmp/spibatch-family] [--held-out]
    python benchmarks/phasing_family.py --tools pynx-default pynx-tuned cuphaser     # after phasing_refs_env.sh
    python benchmarks/phasing_family.py --table                                      # the table of what ran

Objects (:data:`FAMILY`): sums of soft blobs of several sizes, compact / elongated / hollow shapes,
densities of real proteins (4BED, 1EI7 through our simulator: the band-limited density on grids of
2-3 resolutions), complexes with sharp edges; 64^3-128^3 boxes (``--scale`` multiplies the edge:
0.5 for a quick look), a beam-stop hole of 2-6 voxels, Poisson counts at 1e7-1e10 photons in all,
some with the corners beyond a round detector unmeasured (as EMC leaves them), one with a missing
double cone (a wedge of orientations never seen) and one with scattered unmeasured patches.
Three objects (``held_out``) are kept out of tuning: ``--held-out`` runs them, by default they
are skipped.

Scorer (:func:`score`, one for all tools): the density is aligned to the truth (sub-voxel translation
by cross-correlation, and the inversion twin), then the FSC with the truth per shell; ``reach``: where
the FSC first falls below 0.5, as a fraction of q_max (the largest shell at least half measured, at
most N/2), 1.0 if it never does; ``reach_0143`` the same at 0.143.

Tools: ``limit`` the measured amplitudes with the true phases (the true values in unmeasured
voxels): what the data allow; ``before`` spibatch's recipe before issue 15 (:data:`BEFORE`);
``auto`` spibatch's ``recipe: auto``; ``auto16`` the same with 16 starts (best 8), the config's default
counts, whatever ``--starts`` says; ``default`` spibatch's current default; ``pynx-default``,
``pynx-tuned``, ``cuphaser`` run by benchmarks/phasing_family_refs.py in the reference tools'
interpreters (see there how each is set up).  Every tool runs ``--starts`` starts and averages the
best half by its own metric (spibatch: final / free error; PyNX: its free log-likelihood; cuphaser:
its final error), aligned as :func:`spibatch.phasing.multistart.merge` does.  Results are kept in
``OUT/results.json`` (a run adds to it; ``--force`` redoes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPIBATCH_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
BEFORE = "(HIO(beta=0.9) ** 50 * ShrinkWrap(sigma=2, threshold=0.1)) ** 10 * ER() ** 100"
PYNX = "/usr/bin/python3"
CUPHASER = os.environ.get("CUPHASER_PYTHON", "/opt/cuphaser-venv/bin/python")


@dataclass
class Spec:
    """One object: name, kind, box edge, beam-stop radius (voxels), photons in all, detector radius as a
    fraction of N/2 (None: the whole cube measured), extra holes ('wedge' or 'patches'), held out."""

    name: str
    kind: str
    n: int
    beamstop: float
    photons: float
    detector: float | None = None
    holes: str | None = None
    held_out: bool = False


FAMILY = [
    Spec("blobs-small", "blobs", 64, 2, 1e9),
    Spec("blobs-large", "blobs", 64, 4, 1e8),
    Spec("ellipsoid", "ellipsoid", 64, 2, 1e9),
    Spec("rod", "rod", 64, 3, 1e8),
    Spec("shell", "shell", 64, 3, 1e9),
    Spec("dumbbell", "dumbbell", 64, 5, 1e7),
    Spec("4bed-64", "4BED", 64, 3, 1e8, detector=0.95),
    Spec("4bed-128", "4BED", 128, 6, 1e10, detector=0.95),
    Spec("1ei7-64", "1EI7", 64, 4, 1e7),
    Spec("blocks", "blocks", 64, 2, 1e10),
    Spec("blocks-wedge", "blocks", 64, 3, 1e9, holes="wedge"),
    Spec("blobs-mixed", "blobs", 96, 5, 1e9, detector=0.9, held_out=True),
    Spec("1ei7-96", "1EI7", 96, 4, 1e9, detector=0.9, held_out=True),
    Spec("ellipsoid-patches", "ellipsoid", 64, 3, 1e8, holes="patches", held_out=True),
]


# ------------------------------------------------------------------ objects

def _grid(n):
    ax = np.arange(n, dtype=np.float64) - n // 2
    return np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)


def _smooth_noise(rng, n, sigma):
    k = np.fft.fftfreq(n)
    g = np.exp(-2 * np.pi ** 2 * sigma ** 2 * (k[:, None, None] ** 2 + k[None, :, None] ** 2
                                               + np.fft.rfftfreq(n)[None, None, :] ** 2))
    v = np.fft.irfftn(np.fft.rfftn(rng.standard_normal((n, n, n))) * g, s=(n, n, n), axes=(0, 1, 2))
    return v / v.std()


def _blobs(rng, n, sizes, count, radius):
    x, y, z = _grid(n)
    out = np.zeros((n, n, n))
    for _ in range(count):
        c = rng.normal(size=3)
        c *= radius * rng.uniform(0, 1) ** (1 / 3) / np.linalg.norm(c)
        s = rng.uniform(*sizes)
        out += rng.uniform(0.5, 1.5) * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return out


def _rotated(n, rng):
    x, y, z = _grid(n)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return [q[i, 0] * x + q[i, 1] * y + q[i, 2] * z for i in range(3)]


def _soft_ellipsoid(n, axes, rng, texture=0.4):
    u, v, w = _rotated(n, rng)
    r = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (w / axes[2]) ** 2)
    edge = np.clip((1.0 - r) * min(axes), 0.0, 1.0)
    return np.clip(1.0 + texture * _smooth_noise(rng, n, 1.5), 0.1, None) * edge


def _protein(name, n):
    from spibatch.sim.scattering import density, structure_factor
    from spibatch.sim.structure import read_structure

    path = SHARED / "pdb" / f"{name}.pdb"
    if not path.exists():
        path = REPO / "spibatch" / "data" / f"{name}.pdb"
    atoms = read_structure(path)
    m = n + 1                                   # the simulator's grids are odd
    voxel = 2 * atoms.radius_m() / (0.3 * n)    # the particle spans 30% of the box: the same oversampling
    rho, _ = density(structure_factor(atoms, m, 1.0 / (m * voxel)), 1.0 / (m * voxel))
    return rho[:n, :n, :n]


def make_object(spec: Spec, seed: int = 0) -> np.ndarray:
    """The true density (N, N, N) float64, centred near N // 2."""
    rng = np.random.default_rng(seed + sum(map(ord, spec.name)))
    n = spec.n
    x, y, z = _grid(n)
    if spec.kind == "blobs":
        small = _blobs(rng, n, (1.0, 2.0), 30, n / 9)
        large = _blobs(rng, n, (2.5, 4.5), 6, n / 12) if spec.name != "blobs-small" else 0
        return small + (2 * large if spec.name == "blobs-large" else large)
    if spec.kind == "ellipsoid":
        return _soft_ellipsoid(n, n / 8 * rng.uniform(0.85, 1.15, 3), rng)
    if spec.kind == "rod":
        return _soft_ellipsoid(n, (n / 4.5, n / 16, n / 14), rng, texture=0.3)
    if spec.kind == "shell":
        r = np.sqrt(x * x + y * y + z * z)
        shell = np.clip(1.5 - np.abs(r - n / 7) / 1.5, 0, 1)
        return shell * (1 + 0.3 * _smooth_noise(rng, n, 2.0)).clip(0.2) + 0.5 * _blobs(rng, n, (1.0, 1.5), 6, n / 14)
    if spec.kind == "dumbbell":
        d = n / 9
        a = np.clip(n / 12 - np.sqrt((x - d) ** 2 + y * y + z * z), 0, 1)
        b = np.clip(n / 14 - np.sqrt((x + d) ** 2 + (y - 2) ** 2 + z * z), 0, 1)
        rod = np.clip(2.5 - np.sqrt(y * y + z * z), 0, 1) * (np.abs(x) < d)
        return a + 0.7 * b + 0.5 * rod
    if spec.kind == "blocks":             # sharp edges: boxes and a cylinder, flat densities
        out = np.zeros((n, n, n))
        s = n / 64
        out[(np.abs(x - 3 * s) < 6 * s) & (np.abs(y) < 4 * s) & (np.abs(z + 2 * s) < 5 * s)] = 1.0
        out[(np.abs(x + 6 * s) < 3 * s) & (np.abs(y - 5 * s) < 7 * s) & (np.abs(z - 3 * s) < 3 * s)] = 0.6
        out[((x + 2 * s) ** 2 + (z - 6 * s) ** 2 < (2.5 * s) ** 2) & (np.abs(y + 4 * s) < 8 * s)] = 0.8
        return out
    if spec.kind in ("4BED", "1EI7"):
        return _protein(spec.kind, n)
    raise ValueError(f"unknown kind {spec.kind}")


def measured_mask(spec: Spec, seed: int = 0) -> np.ndarray:
    """(N, N, N) bool, centred: which voxels the data measure."""
    n = spec.n
    x, y, z = _grid(n)
    r = np.sqrt(x * x + y * y + z * z)
    mask = r > spec.beamstop
    if spec.detector is not None:
        mask &= r <= spec.detector * n / 2
    if spec.holes == "wedge":                         # a double cone of half angle 15 deg around z
        mask &= np.abs(z) < np.cos(np.radians(15)) * np.maximum(r, 1e-9)
    elif spec.holes == "patches":
        rng = np.random.default_rng(seed + 7)
        blobs = _smooth_noise(rng, n, 2.0)
        mask &= blobs < 2.0
    return mask


@dataclass
class Case:
    spec: Spec
    truth: np.ndarray          # (N, N, N) float64 centred
    intensity: np.ndarray      # (N, N, N) float64 centred Poisson counts, 0 where not measured
    measured: np.ndarray       # (N, N, N) bool centred
    scale: float               # counts per |F|^2 unit


def make_case(spec: Spec, cache: Path | None = None, seed: int = 0) -> Case:
    """The object, its intensity |FFT|^2 scaled to ``spec.photons`` over the measured voxels, Poisson."""
    path = cache / (f"{spec.name}-{spec.n}.npz" if seed == 0 else f"{spec.name}-{spec.n}-seed{seed}.npz") if cache else None
    if path and path.exists():
        z = np.load(path)
        return Case(spec, z["truth"], z["intensity"], z["measured"], float(z["scale"]))
    truth = make_object(spec, seed)
    f = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(truth)))
    clean = np.abs(f) ** 2
    mask = measured_mask(spec, seed)
    scale = spec.photons / clean[mask].sum()
    counts = np.random.default_rng(seed + 11).poisson(clean * scale).astype(np.float64)
    case = Case(spec, truth, np.where(mask, counts, 0.0), mask, scale)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, truth=truth, intensity=case.intensity, measured=mask, scale=scale)
    return case


# ------------------------------------------------------------------ scorer

def q_max(case: Case) -> int:
    """The largest shell with at least half its voxels measured, at most N // 2."""
    from spibatch.phasing.measurement import prepare
    from spibatch.phasing.measurement import max_measured_shell

    m = prepare(case.intensity, measured=case.measured)
    return min(case.spec.n // 2, max_measured_shell(m))


def score(density: np.ndarray, case: Case) -> dict:
    """Align ``density`` (N, N, N, any origin) to the truth (translation + twin), FSC; reach at 0.5 and
    0.143 as fractions of q_max."""
    from spibatch.phasing.alignment import align
    from spibatch.validate import fsc

    aligned, how = align(np.asarray(density, np.float64).real, case.truth)
    curve = fsc(aligned, case.truth).fsc
    top = q_max(case)

    def reach(level):
        for s in range(1, top + 1):
            if np.isfinite(curve[s]) and curve[s] < level:
                a = curve[s - 1]
                return min(1.0, (s - 1 + (a - level) / (a - curve[s])) / top) if a >= level else (s - 1) / top
        return 1.0

    return {"reach": round(reach(0.5), 4), "reach_0143": round(reach(0.143), 4), "cc": round(how.cc, 4),
            "inverted": bool(how.inverted), "q_max": top, "fsc": [round(float(v), 3) for v in curve[:top + 1]]}


def true_phase_density(case: Case) -> np.ndarray:
    """The measured amplitudes with the true phases (the true value in unmeasured voxels)."""
    f = np.fft.fftn(np.fft.ifftshift(case.truth))
    amp = np.sqrt(np.fft.ifftshift(case.intensity) / case.scale)
    measured = np.fft.ifftshift(case.measured)
    est = np.where(measured, amp * np.exp(1j * np.angle(f)), f)
    return np.fft.fftshift(np.fft.ifftn(est).real)


# ------------------------------------------------------------------ tools

def run_spibatch(case: Case, recipe: str, starts: int, threads: int) -> tuple[np.ndarray, dict]:
    from spibatch.phasing.measurement import prepare
    from spibatch.phasing.multistart import merge
    from spibatch.phasing.settings import PhasingSettings
    from spibatch.phasing.starts import run_starts

    settings = PhasingSettings.from_dict({"recipe": recipe, "num_starts": starts, "keep_best": max(1, starts // 2),
                                          "threads": threads, "seed": 1})
    m = prepare(case.intensity, measured=case.measured)
    results = run_starts(settings.seeds, m, settings)
    if os.environ.get("SPIBATCH_FAMILY_STARTS"):    # the starts themselves, to try merge rules on them later
        import pickle

        keep = Path(os.environ["SPIBATCH_FAMILY_STARTS"])
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{case.spec.name}-{recipe}.pkl").write_bytes(pickle.dumps(results))
    merged = merge(results, m, settings.keep_best)
    extra = {}
    before = merge(results, m, settings.keep_best, rank_factor=float("inf"))   # the merge before RANK_FACTOR
    if before.kept_seeds != merged.kept_seeds:
        extra["reach_without_rank_factor"] = score(before.density, case)["reach"]
    return merged.density, {"final_errors": [round(e, 4) for e in merged.final_errors],
                            "free_errors": [None if r.free_error is None else round(r.free_error, 4) for r in results],
                            "failed_starts": sum(r.failure is not None for r in results),
                            "kept_seeds": merged.kept_seeds, **extra}


def run_reference(tool: str, case: Case, starts: int, workdir: Path) -> tuple[np.ndarray, dict]:
    """PyNX / cuphaser in their own interpreters (benchmarks/phasing_family_refs.py), then the same merge."""
    from spibatch.phasing.alignment import align

    workdir.mkdir(parents=True, exist_ok=True)
    inp, out = workdir / f"{case.spec.name}-in.npz", workdir / f"{case.spec.name}-{tool}-out.npz"
    np.savez(inp, intensity=case.intensity, measured=case.measured)
    python = CUPHASER if tool == "cuphaser" else PYNX
    env = dict(os.environ, PYNX_PU="cpu", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    numvox = int(1.2 * np.count_nonzero(case.truth > 0.05 * case.truth.max()))     # cuphaser's oracle count
    cmd = [python, str(REPO / "benchmarks" / "phasing_family_refs.py"), tool, str(inp), str(out), "--starts",
           str(starts), "--numvox", str(numvox)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed: {done.stderr.strip().splitlines()[-3:]}")
    z = np.load(out)
    densities, metric = z["densities"], z["metric"]
    failed = [str(f) for f in z["failed"]] if "failed" in z.files else []
    order = np.argsort(metric)[:max(1, len(metric) // 2)]
    ref = densities[order[0]].astype(np.float64)
    total = np.zeros_like(ref)
    for i in order:
        total += align(densities[i].astype(np.float64), ref)[0]
    return total / len(order), {"metric": [round(float(metric[i]), 5) for i in order], "failed_starts": failed}


def run_tool(tool: str, case: Case, args) -> dict:
    began = time.perf_counter()
    if tool == "limit":
        density, extra = true_phase_density(case), {}
    elif tool in ("before", "auto", "default", "auto16"):
        from spibatch.phasing import DEFAULT_RECIPE

        recipe = {"before": BEFORE, "auto": "auto", "default": DEFAULT_RECIPE, "auto16": "auto"}[tool]
        starts = 16 if tool == "auto16" else args.starts        # auto16: the config's default num_starts
        density, extra = run_spibatch(case, recipe, starts, args.threads)
    elif tool.startswith("recipe="):               # an experiment: any recipe, e.g. recipe=Auto(late=200)
        density, extra = run_spibatch(case, tool.split("=", 1)[1], args.starts, args.threads)
    else:
        try:
            density, extra = run_reference(tool, case, args.starts, args.out / "refs")
        except RuntimeError as exc:           # every start failed (PyNX: SupportTooLarge): scored as reaching 0
            return {"reach": 0.0, "reach_0143": 0.0, "failed": str(exc)[-300:],
                    "seconds": round(time.perf_counter() - began, 1)}
    return {**score(density, case), **extra, "seconds": round(time.perf_counter() - began, 1)}


def table(results: dict, tools: list[str]) -> str:
    head = "| object | N | photons | beam stop | " + " | ".join(tools) + " |"
    lines = [head, "|" + "---|" * (4 + len(tools))]
    for spec in FAMILY:
        row = results.get(spec.name)
        if not row:
            continue
        cells = []
        for t in tools:
            r = row.get(t)
            cells.append("" if r is None else "all starts failed" if r.get("failed") else
                         f"{r['reach']:.3f} / {r['reach_0143']:.3f}")
        name = spec.name + (" (held out)" if spec.held_out else "")
        lines.append(f"| {name} | {spec.n} | {spec.photons:.0e} | {spec.beamstop:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", nargs="+", default=["limit", "before", "auto"])
    ap.add_argument("--objects", nargs="+", default=None)
    ap.add_argument("--held-out", action="store_true", help="also run the held-out objects")
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every box edge (even edges kept)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/spibatch-family"))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="another instance of every object, its noise and holes "
                    "(results kept apart: OUT/results-seedS)")
    ap.add_argument("--table", action="store_true", help="print the table of OUT/results.json and stop")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / ("results" if args.seed == 0 else f"results-seed{args.seed}")   # one file per object and tool
    store.mkdir(exist_ok=True)
    results: dict = {}
    for path in sorted(store.glob("*.json")):
        obj, tool = path.stem.split("--")
        results.setdefault(obj, {})[tool] = json.loads(path.read_text())
    if args.table:
        tools = ["limit", "before", "auto_v1", "auto", "auto16", "pynx-default", "pynx-tuned", "cuphaser"]
        print(table(results, [t for t in tools if any(t in r for r in results.values())]))
        return
    if args.objects:                     # in the order given
        specs = [next(s for s in FAMILY if s.name == name) for name in args.objects]
    else:
        specs = [s for s in FAMILY if args.held_out or not s.held_out]
    for spec in specs:
        if args.scale != 1.0:
            spec.n = max(16, int(round(spec.n * args.scale / 2)) * 2)
        case = make_case(spec, args.out / "cases", seed=args.seed)
        for tool in args.tools:
            if tool in results.get(spec.name, {}) and not args.force:
                continue
            r = run_tool(tool, case, args)
            r.update({"starts": args.starts, "date": time.strftime("%Y-%m-%d %H:%M"),
                      "load": round(os.getloadavg()[0], 2)})
            results.setdefault(spec.name, {})[tool] = r
            (store / f"{spec.name}--{tool}.json").write_text(json.dumps(r))
            print(json.dumps({"object": spec.name, "tool": tool, "reach": r["reach"], "reach_0143": r["reach_0143"],
                              "seconds": r["seconds"]}), flush=True)
    print(table(results, args.tools))


if __name__ == "__main__":
    sys.exit(main())
