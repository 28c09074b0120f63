"""Held-out EMC cases of our own, and Dragonfly beside spibatch on them: model CC and orientation errors.

    python benchmarks/emc_cases.py [--cases arm4 star5 ...] [--seeds 1 2 3] [--out DIR]
                                   [--variant NAME=JSON ...] [--no-dragonfly] [--iterations 30]

A case is a particle of 4-6 non-coplanar domains (ellipsoids of random C/N/O/S atoms on a bent
arm or around a centre: not globular), simulated by our simulator (spibatch.sim.simulate) on
the small set's geometry (64 x 64 pixels of 0.512 mm at 0.3 m, 6.2 A, polarized along x) with
the case's frames, mean photons, fluence jitter and beam stop (or, "wide", 10x larger pixels: 29 degrees
at the edge, where solid angle x polarization vary by 30 %); the seed changes the particle,
the orientations and the photons.  Both tools then run with the same parameters (num_div,
need_scaling, Dragonfly's automatic beta, beta x2 every 10 iterations, 30 iterations); each
``--variant NAME='{"key": value}'`` adds a spibatch run with those EMC settings changed.  Dragonfly adds
the merge sums at q and -q in every 3-D reconstruction (its update_model); spibatch's default
(``friedel_symmetry: true``) does too since 2026-12-05, so rows before that compared unlike settings.

Measured per run against the truth the simulator kept:

* ``cc``: the shell correlation after the best rotation/inversion (spibatch.align.align_intensity,
  radial average removed, shells between the beam stop and the detector edge; one measure for both);
* ``shell_cc``: the mean over one-voxel shells of the per-shell correlation at that alignment;
* ``orient_deg``: the median angle between each frame's true rotation and its most likely one,
  after the one global rotation that best maps the recovered set onto the true set (``orient_within_15deg``:
  the fraction of frames within 15 degrees, about the grid's spacing at num_div 4; random rotations give 0.005:
  the median saturates near 95 degrees whenever fewer than half the frames are right, this fraction does not).

Results go to ``DIR/results.json`` (and one line per run to stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GEOMETRIES = {   # "small": the shared small set's; "wide": 10x larger pixels, to 29 degrees (corr varies by 30 %)
    "small": {"pixels": 64, "pixel_size_m": 0.512e-3, "distance_m": 0.3, "wavelength_m": 6.2e-10, "scale": 1.0},
    "wide": {"pixels": 64, "pixel_size_m": 5.12e-3, "distance_m": 0.3, "wavelength_m": 6.2e-10, "scale": 0.4},
}
ELEMENTS = (("C", 0.63), ("N", 0.17), ("O", 0.19), ("S", 0.01))
CASES = {   # layout, domains, frames, mean photons, fluence jitter, beam stop radius (pixels), geometry
    "arm4": {"layout": "arm", "domains": 4, "frames": 1500, "photons": 1000, "jitter": 0.0, "stop": 6},
    "star5": {"layout": "star", "domains": 5, "frames": 1000, "photons": 400, "jitter": 0.2, "stop": 3},
    "arm6": {"layout": "arm", "domains": 6, "frames": 2500, "photons": 2500, "jitter": 0.3, "stop": 10},
    "star4": {"layout": "star", "domains": 4, "frames": 5000, "photons": 700, "jitter": 0.1, "stop": 8},
    "wide5": {"layout": "arm", "domains": 5, "frames": 2000, "photons": 1500, "jitter": 0.15, "stop": 4,
              "geometry": "wide"},
}


# ------------------------------------------------------------------ the particle and its data

def domain_centres(layout: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3) Angstrom: a bent arm (steps of 62-76 A turning 55-95 degrees, random torsion) or a star
    (70-100 A from the centre); redrawn until clearly non-coplanar (smallest spread >= 0.3 of the largest)."""
    while True:
        if layout == "arm":
            points, direction = [np.zeros(3)], rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            for _ in range(count - 1):
                turn = np.radians(rng.uniform(55, 95))
                normal = np.cross(direction, rng.normal(size=3))
                normal /= np.linalg.norm(normal)
                direction = np.cos(turn) * direction + np.sin(turn) * normal
                points.append(points[-1] + rng.uniform(62, 76) * direction)
            centres = np.array(points)
        else:
            unit = rng.normal(size=(count, 3))
            centres = unit / np.linalg.norm(unit, axis=1, keepdims=True) * rng.uniform(70, 100, (count, 1))
        centres -= centres.mean(axis=0)
        spread = np.linalg.svd(centres, compute_uv=False)
        if spread[-1] >= 0.3 * spread[0] and np.linalg.norm(centres, axis=1).max() < 130:
            return centres


def write_particle(path: Path, layout: str, count: int, rng: np.random.Generator, scale: float = 1.0) -> dict:
    """A PDB file of ``count`` ellipsoidal domains (semi-axes 22-42 A, 0.01 atoms per A^3) at
    :func:`domain_centres`, all lengths times ``scale`` (atoms per A^3 at most 0.05); returns the centres
    and sizes."""
    symbols, weights = zip(*ELEMENTS)
    lines, serial, sizes = [], 0, []
    centres = domain_centres(layout, count, rng) * scale
    for k, centre in enumerate(centres):
        axes = rng.uniform(22, 42, 3) * scale
        rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        num = int(min(0.05, 0.01 / scale ** 3) * 4 / 3 * np.pi * axes.prod())
        unit = rng.normal(size=(num, 3))
        unit *= (rng.random(num) ** (1 / 3) / np.linalg.norm(unit, axis=1))[:, None]
        xyz = centre + (unit * axes) @ rotation.T
        elements = rng.choice(symbols, num, p=weights)
        for (x, y, z), element in zip(xyz, elements):
            serial += 1
            lines.append(f"ATOM  {serial % 100000:5d}  {element:<3s} ALA {chr(65 + k)}{serial % 10000:4d}    "
                         f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00          {element:>2s}")
        sizes.append(axes.round(1).tolist())
    path.write_text("\n".join(lines + ["END"]) + "\n")
    return {"centres": centres.round(1).tolist(), "semi_axes": sizes, "atoms": serial}


def make_case(name: str, seed: int, folder: Path) -> dict:
    """Simulate case ``name`` with ``seed`` into ``folder`` (once: kept for later runs); its files."""
    from spibatch.detector import Detector
    from spibatch.sim import SimulationSettings, simulate

    spec = CASES[name]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"photons": folder / "photons.emc", "detector": folder / "detector.h5", "truth": folder / "truth.h5"}
    info = folder / "particle.json"
    if not paths["truth"].exists():
        rng = np.random.default_rng([seed, sum(map(ord, name))])
        geometry = GEOMETRIES[spec.get("geometry", "small")]
        particle = write_particle(folder / "particle.pdb", spec["layout"], spec["domains"], rng, geometry["scale"])
        detector = Detector.flat(geometry["pixels"], geometry["pixel_size_m"], geometry["distance_m"],
                                 geometry["wavelength_m"], beamstop_radius_pixels=spec["stop"], polarization="x")
        sim = SimulationSettings(pdb=folder / "particle.pdb", num_patterns=spec["frames"],
                                 mean_photons_per_frame=spec["photons"], fluence_jitter=spec["jitter"],
                                 assembly=False, seed=seed)
        simulate(detector, sim, folder, show_progress=False)
        info.write_text(json.dumps({"case": name, "seed": seed, **spec, **particle}, indent=1))
    return {**paths, "info": json.loads(info.read_text())}


# ------------------------------------------------------------------ the two tools

def dragonfly_exe() -> Path:
    env = os.environ.get("SPIBATCH_DRAGONFLY")
    path = Path(env) if env else Path("/opt/dragonfly-venv/bin")
    return path / "dragonfly.emc" if path.is_dir() else path


def run_dragonfly(case: dict, work: Path, iterations: int, threads: int, num_div: int, extra: str = "",
                  fixed_seed: bool = True) -> dict:
    """``dragonfly.emc`` on the case: its last output, per-iteration times and wall time (``fixed_seed``: its
    one fixed random start, else a random start of its own)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.ini").write_text(
        f"[emc]\nin_photons_file = {case['photons']}\nin_detector_file = {case['detector']}\n"
        f"num_div = {num_div}\noutput_folder = output/\nlog_file = EMC.log\nneed_scaling = 1\n"
        f"beta_factor = 1.0\nbeta_schedule = 2.0 10\nfixed_seed = {int(fixed_seed)}\n{extra}")
    output = work / "output" / f"output_{iterations:03d}.h5"
    start = time.perf_counter()
    if not output.exists():   # kept from an earlier run of this script
        with open(work / "stdout.txt", "w") as log:
            subprocess.run([str(dragonfly_exe()), "-c", "config.ini", "-t", str(threads), str(iterations)],
                           cwd=work, check=True, stdout=log, stderr=subprocess.STDOUT)
    rows = [line.split() for line in (work / "EMC.log").read_text().splitlines()]
    return {"output": output, "wall_s": time.perf_counter() - start,
            "times": [float(r[1]) for r in rows if len(r) >= 7 and r[0].isdigit()]}


def run_spibatch(case: dict, work: Path, iterations: int, threads: int, num_div: int, overrides: dict) -> dict:
    """``spibatch emc`` (a child process, ``threads`` Numba threads) with the same parameters plus ``overrides``."""
    from spibatch.layout import RunLayout

    work.mkdir(parents=True, exist_ok=True)
    config = work / "pipeline.yaml"
    config.write_text(json.dumps({"name": "case", "emc": {
        "photons": str(case["photons"]), "detector": str(case["detector"]), "num_div": num_div,
        "iterations": iterations, "need_scaling": True, "beta": "auto", "beta_factor": 1.0,
        "beta_schedule": {"factor": 2.0, "period": 10}, "seed": 1, **overrides}}))
    code = os.environ.get("SPIBATCH_CODE", str(REPO))    # which spibatch (e.g. a copy of an older commit)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=code)
    run = RunLayout(work / "run")
    start = time.perf_counter()
    if not run.emc_output(iterations).exists():   # kept from an earlier run of this script
        shutil.rmtree(run.path, ignore_errors=True)
        # cwd: ``python -m`` puts the working folder first on sys.path, ahead of PYTHONPATH (SPIBATCH_CODE)
        subprocess.run([sys.executable, "-m", "spibatch", "-q", "emc", str(config.resolve()), "--out",
                        str((work / "run").resolve())], env=env, check=True, cwd=code)
    lines = [json.loads(x) for x in run.emc_metrics.read_text().splitlines() if x.strip()]
    return {"output": run.emc_output(iterations), "wall_s": time.perf_counter() - start,
            "times": [x["time_s"] for x in lines]}


# ------------------------------------------------------------------ measures

def recovered_rotations(output: Path) -> np.ndarray:
    """(D, 3, 3): each frame's most likely rotation from an ``output_NNN.h5`` of either tool, as the matrix
    ``R`` its pattern was sliced with: the frame samples the model at ``R q`` (q the pixel's lab q-vector).

    That is spibatch's convention (spibatch.kernels.emc_cpu; the simulator's truth too, spibatch.sim.patterns):
    ``rotation_matrices`` of the recorded quaternion.  Dragonfly builds the transposed matrix from the same
    (w, x, y, z) quaternion before slicing (its ``make_rot_quat`` is the inverse rotation), so its frames' matrices
    are transposed here.  Checked by starting both tools from the true intensity (tests/test_emc_orientation_measure.py
    for spibatch; one Dragonfly iteration on arm4-s1: its matrices as read were 121 deg from the truth, transposed
    11 deg, the grid's spacing being 13.5 deg)."""
    import h5py

    from spibatch.emc.rotations import rotation_matrices

    with h5py.File(output, "r") as f:
        if "intens" in f:                                   # Dragonfly: indices into its own quaternion list
            return np.transpose(rotation_matrices(f["quaternions"][:, :4][f["orientations"][:]]), (0, 2, 1))
        return rotation_matrices(f["quaternions"][:])


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (degrees) between rotations a (D, 3, 3) and b (D, 3, 3)."""
    cos = (np.einsum("dji,dji->d", a, b) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


FRIEDEL = np.diag([-1.0, -1.0, 1.0])   # Rz(180): R and R Rz(180) slice the same pattern (flat Ewald sphere)


def _twin_angles(true: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """Per frame the smaller angle of ``mapped`` to ``true`` or to its Friedel twin ``true Rz(180)``."""
    return np.minimum(_angles(true, mapped), _angles(true @ FRIEDEL, mapped))


def orientation_errors(true: np.ndarray, found: np.ndarray, trials: int = 200, inlier_deg: float = 10.0) -> np.ndarray:
    """Angles (degrees) between each frame's true rotation and ``G found`` for the one global rotation G that
    puts the most frames within ``inlier_deg``, refined by least squares over those frames.

    Both are slicing matrices (the pattern samples the model at ``R q``: :func:`recovered_rotations`).  A
    reconstruction is the truth turned by some G (``model(G k) = truth(k)`` up to its own errors), so a frame
    slices it at ``G R_true``: G acts on the left (the model's frame), never on the right (the detector's).
    Each frame may also land on its Friedel twin ``G R_true Rz(180)`` (the same pattern up to the Ewald sphere's
    curvature, Rz on the right: the lab's beam axis), so the smaller of the two errors counts.  G is tried from
    ``trials`` frames (each frame and its twin), the best kept, then refitted to its inliers."""
    rng = np.random.default_rng(0)
    best, best_score, best_g = None, -1.0, None
    for d in rng.choice(len(true), min(trials, len(true)), replace=False):
        for twin in (np.eye(3), FRIEDEL):
            g = true[d] @ twin @ found[d].T                        # G found_d = true_d twin
            angle = _twin_angles(true, np.einsum("ij,djk->dik", g, found))
            score = np.mean(angle < inlier_deg) - 1e-6 * np.median(angle)
            if score > best_score:
                best, best_score, best_g = angle, score, g
    for _ in range(3):                                             # least squares over the inliers
        inliers = best < inlier_deg
        if inliers.sum() < 3:
            break
        mapped = np.einsum("ij,djk->dik", best_g, found[inliers])
        near_twin = _angles(true[inliers] @ FRIEDEL, mapped) < _angles(true[inliers], mapped)
        target = true[inliers].copy()
        target[near_twin] = target[near_twin] @ FRIEDEL
        u, _, vt = np.linalg.svd(np.einsum("dij,dkj->ik", target, found[inliers]))   # max tr(G^T sum T F^T)
        g = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
        angle = _twin_angles(true, np.einsum("ij,djk->dik", g, found))
        score = np.mean(angle < inlier_deg) - 1e-6 * np.median(angle)
        if score <= best_score:
            break
        best, best_score, best_g = angle, score, g
    return best


def measure(output: Path, case: dict) -> dict:
    """cc, shell_cc and orientation errors of one run's output against the case's truth."""
    from spibatch.align import align_intensity, rotate_intensity
    from spibatch.detector import Detector
    from spibatch.emc.compare import shell_range
    from spibatch.io.results import read_volume
    from spibatch.sim.patterns import rotation_matrices as truth_matrices
    from spibatch.validate import crop_to_common, radial_index

    import h5py

    truth = read_volume(case["truth"], "intensity").astype(np.float64)
    model = read_volume(output).astype(np.float64)
    r_min, r_max = shell_range(Detector.read(case["detector"]))
    alignment = align_intensity(model, truth, r_min, r_max)
    model_c, truth_c = crop_to_common(model, truth)
    rotated = rotate_intensity(model_c, alignment.rotation)
    shell = np.rint(radial_index(truth_c.shape[0])).astype(int)
    per_shell = [np.corrcoef(rotated[shell == s], truth_c[shell == s])[0, 1]
                 for s in range(int(np.ceil(r_min)) + 1, int(r_max))]
    with h5py.File(case["truth"], "r") as f:
        true = truth_matrices(f["quaternions"][:])
    errors = orientation_errors(true, recovered_rotations(output))
    return {"cc": round(float(alignment.cc), 4), "shell_cc": round(float(np.mean(per_shell)), 4),
            "orient_deg": round(float(np.median(errors)), 2), "orient_p90_deg": round(float(np.percentile(errors, 90)), 2),
            "orient_within_15deg": round(float(np.mean(errors < 15)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--num-div", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/emc-cases"))
    ap.add_argument("--data", type=Path, default=None, help="where the simulated cases are kept (default OUT/data)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help='a spibatch run with EMC settings changed, e.g. legacy=\'{"merge": "weighted"}\'')
    ap.add_argument("--no-dragonfly", action="store_true")
    ap.add_argument("--no-default", action="store_true", help="only the --variant runs of spibatch")
    ap.add_argument("--dragonfly-starts", type=int, default=0, metavar="N",
                    help="also N Dragonfly runs from random starts (fixed_seed = 0: each run its own), named "
                         "dragonfly-r1 ...: Dragonfly's spread over starts beside spibatch's over --variant seeds")
    args = ap.parse_args()
    variants = {} if args.no_default else {"spibatch": {}}
    for item in args.variant:
        name, _, text = item.partition("=")
        variants[name] = json.loads(text)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    data = args.data or args.out / "data"
    for name in args.cases:
        for seed in args.seeds:
            case = make_case(name, seed, data / f"{name}-s{seed}")
            row = results.setdefault(f"{name}-s{seed}", {"case": case["info"]})
            runs = [("dragonfly", None)] if not args.no_dragonfly else []
            runs += [(f"dragonfly-r{k}", None) for k in range(1, args.dragonfly_starts + 1)]
            runs += list(variants.items())
            for tool, overrides in runs:
                work = args.out / "runs" / f"{name}-s{seed}" / tool
                if tool.startswith("dragonfly"):
                    out = run_dragonfly(case, work, args.iterations, args.threads, args.num_div,
                                        fixed_seed=tool == "dragonfly")
                else:
                    out = run_spibatch(case, work, args.iterations, args.threads, args.num_div, overrides)
                row[tool] = {**measure(out["output"], case), "wall_s": round(out["wall_s"], 1),
                             "settings": overrides, "load": round(os.getloadavg()[0], 2)}
                print(json.dumps({"case": f"{name}-s{seed}", "tool": tool, **row[tool]}), flush=True)
                results_path.parent.mkdir(parents=True, exist_ok=True)
                results_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
