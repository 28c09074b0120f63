"""Run a fixed set of spibatch commands and fingerprint every array they write (for refactors).

    python3 benchmarks/identity_check.py WORKDIR [--only NAME ...]      # writes WORKDIR/fingerprints.json
    python3 benchmarks/identity_check.py --compare A/fingerprints.json B/fingerprints.json

Each scenario runs the installed ``spibatch`` (``python3 -m spibatch``) on the shared data sets or a
small simulation, with two Numba threads, and records the SHA-256 of every dataset of every HDF5 file
(photons, detector, truth, EMC outputs, phasing results, FSC tables) and of every MRC's data, by
path relative to the scenario's run folder.  Two fingerprint files of the same scenarios must be
identical when a change is meant to leave behaviour alone; ``--compare`` lists what differs.
Attributes and provenance are not fingerprinted (they hold times, hosts and paths).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = (HERE.parent.parent / "shared" / "datasets").resolve()
SMALL = SHARED / "dragonfly-small"
PDB = SHARED / "pdb" / "1EI7.pdb"
RECIPE = "(HIO(beta=0.9) ** 20 * ShrinkWrap(sigma=2, threshold=0.1)) ** 3 * ER() ** 20"


def spibatch(*args: str, cwd: Path, mpi: int = 0) -> None:
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    words = [sys.executable, "-m", "spibatch", *args]
    if mpi:
        words = ["mpirun", "-n", str(mpi), "--bind-to", "none", "-x", "NUMBA_NUM_THREADS=1"] + words
    began = time.perf_counter()
    done = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(words)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"  {' '.join(args[:2])}: {time.perf_counter() - began:.1f} s", flush=True)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def pipeline_text(extra: str = "") -> str:
    return f"""
    name: ident
    geometry: {{detector_pixels: 32, pixel_size_m: 0.001, detector_distance_m: 0.3, photon_energy_ev: 6000,
               beamstop_radius_pixels: 2}}
    simulation: {{pdb: {PDB}, num_patterns: 300, mean_photons_per_frame: 400, seed: 3, chunk_frames: 128}}
    emc: {{num_div: 2, iterations: 3, frames_per_shard: 100}}
    phasing: {{num_starts: 2, keep_best: 2, recipe: "{RECIPE}", threads: 2}}
    {extra}
    """


def scenarios(work: Path) -> dict:
    def sim():
        cfg = write(work / "sim.yaml", pipeline_text())
        spibatch("simulate", str(cfg), "--out", str(work / "sim"), cwd=work)

    def emc_cfg() -> Path:
        return write(work / "emc.yaml", f"""
        name: ident-emc
        emc: {{photons: {SMALL / 'photons.emc'}, detector: {SMALL / 'det_sim.h5'}, num_div: 4, iterations: 4,
              frames_per_shard: 250}}
        phasing: {{intensity: {work / 'emc' / 'output_004.h5'}, num_starts: 3, keep_best: 2, recipe: "{RECIPE}",
                   threads: 2}}
        """)

    def emc_output(iteration: int) -> Path:
        """The emc scenario's output_NNN.h5 (in emc/emc/ since the one run-folder layout, in emc/ before)."""
        name = f"output_{iteration:03d}.h5"
        return next((p for p in (work / "emc" / "emc" / name, work / "emc" / name) if p.exists()), None)

    def emc():
        spibatch("emc", str(emc_cfg()), "--out", str(work / "emc"), cwd=work)

    def emc_mpi():
        spibatch("emc", str(emc_cfg()), "--out", str(work / "emc-mpi"), cwd=work, mpi=2)

    def phase():
        if emc_output(4) is None:
            emc()
        spibatch("phase", str(emc_cfg()), "--intensity", str(emc_output(4)), "--truth", str(SMALL / "densityMap.bin"),
                 "--truth-voxel-size-m", "41.5e-10", "--out", str(work / "phase"), cwd=work)

    def validate():
        if emc_output(4) is None:
            emc()
        spibatch("validate", str(emc_output(3)), str(emc_output(4)), "--out", str(work / "validate"), cwd=work)

    def ingest():
        import h5py
        import numpy as np

        rng = np.random.default_rng(5)
        frames = rng.poisson(0.3, (40, 16, 16)).astype(np.float32) * 20 + rng.normal(0, 2, (40, 16, 16))
        with h5py.File(work / "frames.cxi", "w") as f:
            f["entry_1/data_1/data"] = frames.astype(np.float32)
            f["entry_1/instrument_1/detector_1/distance"] = 0.2
            f["entry_1/instrument_1/detector_1/x_pixel_size"] = 1e-3
            f["entry_1/instrument_1/detector_1/y_pixel_size"] = 1e-3
            f["entry_1/instrument_1/source_1/energy"] = 6000 * 1.602176634e-19
        spibatch("ingest", str(work / "frames.cxi"), "--adu-per-photon", "20", "--clip-negative",
                 "--out", str(work / "ingest"), cwd=work)

    def run_site(name: str, mode: str):
        site = write(work / f"site-{name}.yaml", f"""
        name: {name}
        provider: local
        workers: 2
        emc_mode: {mode}
        local: {{mpi: "{'mpirun' if mode == 'hpc' else 'off'}"}}
        """)
        cfg = write(work / f"run-{name}.yaml", pipeline_text())
        spibatch("run", str(cfg), "--site", str(site), "--out", str(work / f"run-{name}"), cwd=work)

    def demo():
        spibatch("demo", "--out", str(work / "demo"), cwd=work)

    return {"sim": sim, "emc": emc, "emc-mpi": emc_mpi, "phase": phase, "validate": validate, "ingest": ingest,
            "run-htc": lambda: run_site("htc", "htc"), "run-hpc": lambda: run_site("hpc", "hpc"), "demo": demo}


def fingerprint_tree(folder: Path) -> dict[str, str]:
    import h5py

    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if "runinfo" in path.parts or path.name.startswith("."):
            continue
        if path.suffix in (".h5", ".emc", ".cxi"):
            with h5py.File(path, "r") as f:
                def visit(name, obj, rel=rel):
                    if isinstance(obj, h5py.Dataset):
                        data = obj[()]
                        digest = hashlib.sha256(repr(data.dtype).encode())
                        if data.dtype.kind == "O":
                            for item in data.ravel():
                                digest.update(item.tobytes() if hasattr(item, "tobytes") else repr(item).encode())
                        else:
                            digest.update(getattr(data, "tobytes", lambda: repr(data).encode())())
                        out[f"{rel}:{name}"] = digest.hexdigest()
                f.visititems(visit)
        elif path.suffix == ".mrc":
            import mrcfile

            with mrcfile.open(path, permissive=True) as m:
                out[rel] = hashlib.sha256(m.data.tobytes()).hexdigest()
        elif path.name in ("truth_comparison.json", "emc_vs_truth.json", "fsc_vs_truth.json"):
            data = json.loads(path.read_text())
            keep = {k: v for k, v in data.items() if not k.endswith(("_seconds", "_path")) and k not in
                    ("emc_seconds", "phasing_seconds", "truth", "truth_path", "title", "intensity")}   # paths, times
            out[rel] = hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()
    return out


STAGE_OF_TOP_FILE = {"sim": "simulate", "emc": "emc", "emc-mpi": "emc", "phase": "phase", "validate": "validate",
                     "ingest": "ingest", "run-htc": "simulate", "run-hpc": "simulate", "demo": "simulate"}


def old_to_new(key: str) -> str:
    """A fingerprint key of the old layout (files at the top of one-stage runs; the pipeline's data at the top,
    its truth comparisons inside emc/ and phase/) as the one layout names it."""
    scenario, _, rest = key.partition("/")
    path, colon, dataset = rest.partition(":")
    moves = {"emc/truth_comparison.json": "validate/emc_vs_truth.json",
             "phase/fsc_vs_truth.json": "validate/fsc_vs_truth.json", "fsc_vs_truth.json": "validate/fsc_vs_truth.json"}
    if path in moves:
        path = moves[path]
    elif "/" not in path:
        path = f"{STAGE_OF_TOP_FILE[scenario]}/{path}"
    return f"{scenario}/{path}{colon}{dataset}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", type=Path)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--rescan", action="store_true", help="fingerprint the scenarios' folders again without "
                        "running anything (after a change to what is fingerprinted)")
    parser.add_argument("--compare", nargs=2, type=Path)
    parser.add_argument("--old-layout", action="store_true", help="the first file was written before the one "
                        "run-folder layout (d4b5372 and earlier): map its paths to today's")
    args = parser.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        if args.old_layout:
            a = {old_to_new(k): v for k, v in a.items()}
        keys = sorted(set(a) | set(b))
        differ = [k for k in keys if a.get(k) != b.get(k)]
        for k in differ:
            print(f"DIFFERS {k}: {a.get(k, 'absent')[:12]} vs {b.get(k, 'absent')[:12]}")
        print(f"{len(keys) - len(differ)} of {len(keys)} fingerprints identical")
        raise SystemExit(1 if differ else 0)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    table = scenarios(work)
    names = args.only or list(table)
    target = work / "fingerprints.json"
    result = json.loads(target.read_text()) if target.exists() else {}   # other scenarios of earlier calls stay
    for name in names:
        print(name, flush=True)
        if not args.rescan:
            table[name]()
        result = {k: v for k, v in result.items() if not k.startswith(name + "/")}
        result.update({f"{name}/{k}": v for k, v in fingerprint_tree(work / name).items()})
    target.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"{len(result)} fingerprints in {target}")


if __name__ == "__main__":
    main()
