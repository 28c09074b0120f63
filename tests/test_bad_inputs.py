"""Bad input is stopped before any work starts, with one line (issue 12).

The corpus (tests/bad_inputs/cases.py): every case runs ``python -m spibatch ...`` as a real subprocess
in a folder of its own and must exit 2 with exactly one stderr line ``spibatch: error: ...`` naming the
file and the field, no traceback, nothing created or changed in its folder or in the shared inputs, and
an earlier run's folder (one real ``spibatch emc`` run per session) byte-identical.  Cases run two at a
time in the background while the tests read their results in order.

Then the estimates (spibatch/estimates.py) on both sides: the real workloads of BENCHMARKS.md pass, the
issue's absurd sizes are refused, and the other new checks in-process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from bad_inputs import builders
from bad_inputs.cases import CASES, EMC, Case
from spibatch import estimates
from spibatch.errors import InputError

WORKERS = int(os.environ.get("SPIBATCH_CORPUS_WORKERS", "2"))
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def listing(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` (links not followed): kind, size and modification time."""
    out = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            st = path.lstat()
            out[str(path.relative_to(folder))] = (st.st_mode >> 12, st.st_size if not path.is_dir() else 0,
                                                  st.st_mtime_ns)
    return out


def digest(folder: Path) -> str:
    """SHA-256 of every file's relative path and bytes under ``folder`` (and of every folder's name)."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        h.update(f"D {Path(root).relative_to(folder)} {sorted(dirs)}\n".encode())
        for name in sorted(files):
            path = Path(root) / name
            h.update(f"F {path.relative_to(folder)}\n".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


class Corpus:
    """The base inputs, the earlier run, and every case's result (computed in the background, 2 at a time)."""

    def __init__(self, root: Path, small_dataset: Path):
        began = time.perf_counter()
        self.root = root
        self.base = builders.make_base(root / "base", small_dataset)
        self.base.earlier = root / "earlier"
        config = root / "earlier.yaml"
        config.write_text(builders.yaml_text(EMC).format(**self.base.fmt()))
        done = subprocess.run([sys.executable, "-m", "spibatch", "emc", str(config), "--out", str(self.base.earlier)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        self.earlier_digest = digest(self.base.earlier)
        self.base_listing = listing(self.base.folder)
        self.setup_seconds = time.perf_counter() - began
        self.pool = ThreadPoolExecutor(max_workers=WORKERS)
        self.started = time.perf_counter()
        self.futures = {case.id: self.pool.submit(self.run, case) for case in CASES
                        if not (case.unless_root and IS_ROOT)}
        self.finished = None

    def run(self, case: Case) -> dict:
        folder = self.root / "cases" / case.id
        folder.mkdir(parents=True)
        for name, build in case.files.items():
            build(folder / name, self.base)
        before = listing(folder)
        argv = [arg.format(**self.base.fmt()) for arg in case.argv]
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "spibatch", *argv], cwd=folder, capture_output=True, text=True,
                              timeout=300)
        return {"returncode": done.returncode, "stderr": done.stderr, "stdout": done.stdout,
                "seconds": time.perf_counter() - began, "created": sorted(set(listing(folder)) - set(before)),
                "changed": sorted(k for k, v in listing(folder).items() if k in before and before[k] != v),
                "base_unchanged": listing(self.base.folder) == self.base_listing,
                "earlier_unchanged": digest(self.base.earlier) == self.earlier_digest}

    def result(self, case: Case) -> dict:
        result = self.futures[case.id].result()
        if all(f.done() for f in self.futures.values()) and self.finished is None:
            self.finished = time.perf_counter()
        return result


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, small_dataset, request) -> Corpus:
    corpus = Corpus(tmp_path_factory.mktemp("bad_inputs"), small_dataset)

    def summary() -> None:
        corpus.pool.shutdown(wait=True, cancel_futures=True)
        ran = [f.result() for f in corpus.futures.values() if f.done() and not f.cancelled() and not f.exception()]
        if not ran:
            return
        wall = (corpus.finished or time.perf_counter()) - corpus.started
        line = (f"bad-input corpus: {len(CASES)} cases ({len(CASES) - len(corpus.futures)} skipped as root) in "
                f"{len({c.category for c in CASES})} categories; {len(ran)} ran in {wall:.0f} s on {WORKERS} workers "
                f"(+ {corpus.setup_seconds:.0f} s to write the inputs and the earlier run)")
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)

    request.addfinalizer(summary)
    return corpus


def _param(case: Case):
    marks = []
    if case.unless_root:
        marks.append(pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions"))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_stops_before_work(corpus, case):
    result = corpus.result(case)
    stderr = result["stderr"]
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("spibatch: error: "), line
    assert result["returncode"] == 2, (result["returncode"], line)
    missing = [word for word in case.expect if word not in line]
    assert not missing, f"the line does not name {missing}: {line}"
    assert not result["created"], f"created {result['created']}: {line}"
    assert not result["changed"], f"changed {result['changed']}: {line}"
    assert result["base_unchanged"], "a shared input changed"
    assert result["earlier_unchanged"], "the earlier run's folder changed"


def test_corpus_size_and_coverage():
    """At least 120 cases, distinct ids; every field of every config section is named by some case."""
    from spibatch import config

    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 120, len(CASES)
    named = " ".join(" ".join(c.expect) for c in CASES)
    sections = {"geometry": config.Geometry, "simulation": config.Simulation, "emc": config.EMC,
                "emc.beta_schedule": config.BetaSchedule, "emc.refine": config.Refine, "phasing": config.Phasing, "ingest": config.Ingest,
                "validation": config.Validation, "output": config.Output, "source": config.Source}
    missing = [f"{section}.{name}" for section, model in sections.items() for name in model.model_fields
               if f"{section}.{name}" not in named and not (section == "phasing" and name == "keep_best")]
    missing += [name for name in config.Pipeline.model_fields if name not in named]
    assert not missing, f"no case names {missing}"
    print(f"bad-input corpus: {len(CASES)} cases, {len({c.category for c in CASES})} categories")


# ---------------------------------------------------------------- the estimates, in-process

BENCH_MACHINE = estimates.Budget(23 * estimates.GIB, "BENCHMARKS.md's machine", cores=2)


def test_flat_geometry_equals_the_detector():
    from spibatch.detector import Detector

    rng = np.random.default_rng(0)
    cases = [(64, 0.5e-3, 0.15, 3), (150, 0.512e-3, 0.3, 10), (128, 200e-6, 0.13, 4), (64, 0.512e-3, 0.3, 6)]
    cases += [(int(rng.integers(2, 200)), 10 ** rng.uniform(-5, -2.5), 10 ** rng.uniform(-3, 1), rng.uniform(0, 9))
              for _ in range(60)]
    for pixels, pixel, distance, stop in cases:
        detector = Detector.flat(pixels, pixel, distance, 1e-10, beamstop_radius_pixels=stop)
        flat = estimates.flat_geometry(pixels, pixel, distance, stop)
        assert flat.model_size == detector.model_size()
        used = int((detector.mask == 0).sum())
        assert flat.used_pixels <= used or used < 50


@pytest.mark.parametrize("name, estimate", [
    ("demo simulation (1000 x 64^2, 91^3)",
     lambda: estimates.simulation(estimates.flat_geometry(64, 0.5e-3, 0.15, 3), 1000, 1000.0, 1024)),
    ("the 100 000-frame simulation (128^2 AGIPD pixels, 181^3)",
     lambda: estimates.simulation(estimates.flat_geometry(128, 200e-6, 0.13, 4), 100_000, 1000.0, 1024)),
    ("EMC dragonfly-medium (4000 frames, num_div 5, 20 iterations)",
     lambda: estimates.emc(213, 6300, 4000, 4096, 17104, 20, parallel=2)),
    ("EMC at 100 000 frames (num_div 6, 181^3)", lambda: estimates.emc(181, 10860, 100_000, 4096, 12900, 30, parallel=2)),
    ("the GPU bench's large EMC (100 000 frames, num_div 10, 224^2), on the CPU",
     lambda: estimates.emc(319, 50100, 100_000, 4096, 35000, 30, parallel=2)),
    ("phasing 128^3, 16 starts", lambda: estimates.phasing(128, 16, 1100, parallel=2)),
    ("phasing 256^3, 16 starts", lambda: estimates.phasing(256, 16, 1100, parallel=2)),
    ("phasing 4BED medium 225^3, 8 starts", lambda: estimates.phasing(225, 8, 1100, parallel=2, read_voxels=211 ** 3)),
    ("phasing 512^3, 16 starts (the GPU bench's size), on the CPU", lambda: estimates.phasing(512, 16, 1100, parallel=2)),
    ("phasing 512^3 on a GPU", lambda: estimates.phasing(512, 16, 1100, gpu=True)),
    ("CXI ingest of the medium set (4000 x 150^2 float32, blocks of 256)",
     lambda: estimates.ingest(4000, 22500, 4, 256)),
])
def test_real_workloads_pass(name, estimate):
    result = estimate().check("pipeline.yaml", BENCH_MACHINE)
    assert result.bytes < BENCH_MACHINE.memory


@pytest.mark.parametrize("estimate, words", [
    (lambda: estimates.emc(5000, 3240, 1000, 4096, 2984, 30, parallel=2), ["emc.model_size", "4.66 TiB", "23 GiB"]),
    (lambda: estimates.emc(91, 50_000_010_000, 1000, 4096, 2984, 30, parallel=2), ["emc.num_div", "TiB"]),
    (lambda: estimates.emc(91, 3240, 1000, 4096, 2984, 10 ** 12, parallel=2), ["emc.iterations", "years"]),
    (lambda: estimates.simulation(estimates.flat_geometry(100_000, 0.5e-3, 0.15), 1000),
     ["geometry.detector_pixels", "GiB"]),
    (lambda: estimates.simulation(estimates.flat_geometry(64, 0.5e-3, 0.15), 10 ** 12), ["simulation.num_patterns"]),
    (lambda: estimates.phasing(91, 10 ** 8, 1100, parallel=2), ["phasing.num_starts", "TiB"]),
    (lambda: estimates.ingest(10 ** 5, 10 ** 6, 4, 10 ** 9), ["ingest.chunk_frames"]),
])
def test_absurd_sizes_are_refused_with_the_size_and_the_memory(estimate, words):
    with pytest.raises(InputError) as info:
        estimate().check("pipeline.yaml", BENCH_MACHINE)
    message = str(info.value)
    assert message.startswith("pipeline.yaml: ") and "\n" not in message
    assert ("of memory (BENCHMARKS.md's machine)" in message) or ("years" in message)
    assert all(word in message for word in words), message


def test_machine_memory_names_its_source():
    memory, source = estimates.machine_memory()
    assert memory > 2 ** 28 and source
    budget = estimates.Budget.here()
    assert budget.cores >= 1 and budget.memory == memory


def test_site_budget_uses_the_declared_memory(tmp_path):
    from spibatch.backends import load_site
    from spibatch.stages.checks import budget_for

    (tmp_path / "slurm.yaml").write_text("provider: slurm\nworkers: 4\nslurm: {mem_per_node_gb: 64}\n")
    slurm = budget_for(load_site(tmp_path / "slurm.yaml"))
    assert slurm.memory == 64 * 10 ** 9 and "mem_per_node_gb" in slurm.memory_source and slurm.cores >= 4 * 128
    (tmp_path / "k8s.yaml").write_text("provider: kubernetes\nkubernetes: {memory_limit: 8Gi, memory_request: 1Gi}\n")
    assert budget_for(load_site(tmp_path / "k8s.yaml")).memory == 8 * 2 ** 30
    assert budget_for(None).memory == estimates.machine_memory()[0]


def test_validate_memory_is_judged_on_the_sites_workers(emc_small, tmp_path):
    """Two 256^3 volumes to compare (3.2 GB by the estimate, their files a few kB: chunks never written) fit this
    machine but not a Slurm node of 2 GB: ``spibatch run --site`` refuses before anything is created, naming the
    site's memory (it was judged against this machine)."""
    import h5py

    from platform_helpers import write_pipeline
    from spibatch.backends import load_site
    from spibatch.config import load_pipeline
    from spibatch.pipeline import check_pipeline

    for name in ("a.h5", "b.h5"):
        with h5py.File(tmp_path / name, "w") as f:
            f.create_dataset("intensity", shape=(256, 256, 256), dtype="f4", chunks=(32, 32, 32))
    config = write_pipeline(tmp_path, emc_small)
    config.write_text(config.read_text() + f"validation: {{volume: {tmp_path / 'a.h5'}, reference: "
                      f"{tmp_path / 'b.h5'}, dataset: intensity, kind: intensity}}\n")
    (tmp_path / "slurm.yaml").write_text("provider: slurm\nworkers: 1\nslurm: {mem_per_node_gb: 2}\n")
    pipeline = load_pipeline(config)
    estimates.validate([((256,) * 3, "validation.volume")] * 2).check(config)   # this machine: fits
    with pytest.raises(InputError) as info:
        check_pipeline(pipeline, config, load_site(tmp_path / "slurm.yaml"))
    message = str(info.value)
    assert "validate stage" in message and "mem_per_node_gb" in message and "\n" not in message, message


@pytest.mark.parametrize("site, refused", [
    ("workers: 4\nemc_mode: hpc\nslurm: {mem_per_node_gb: 3, nodes: 1}", "on each of 4 MPI ranks"),
    ("workers: 4\nemc_mode: htc\nslurm: {mem_per_node_gb: 3, nodes: 1}", "in each of 4 workers"),
    ("workers: 4\nemc_mode: hpc\nslurm: {mem_per_node_gb: 3, nodes: 4}", None),
    ("workers: 1\nemc_mode: hpc\nslurm: {mem_per_node_gb: 3}", None),
    ("workers: 4\nemc_mode: hpc\nslurm: {mem_per_node_gb: 3, nodes: 1}\nemc: {frames_per_shard: 100000}", None),
])
def test_emc_memory_counts_the_processes_sharing_a_node(emc_small, tmp_path, site, refused):
    """A 301^3 model (41 B a voxel in one process: 1.1 GB) on Slurm nodes of 3 GB: one rank or worker a node fits;
    four ranks (each also holding the Allreduce buffer) or four HTC workers on one node do not, and `spibatch run
    --site` says so before anything is made (it judged one process against the node: four were OOM-killed)."""
    from platform_helpers import write_pipeline
    from spibatch.backends import load_site
    from spibatch.config import load_pipeline
    from spibatch.pipeline import check_pipeline

    config = write_pipeline(tmp_path, emc_small)
    config.write_text(config.read_text().replace("emc: {", "emc: {model_size: 301, ", 1))
    assert "model_size: 301" in config.read_text()
    if "frames_per_shard" in site:       # one shard: one rank holds the model, whatever the workers
        site = site.split("\nemc:")[0]
        config.write_text(config.read_text().replace("frames_per_shard: 60", "frames_per_shard: 100000", 1))
    (tmp_path / "slurm.yaml").write_text("provider: slurm\n" + site + "\n")
    pipeline, site_ = load_pipeline(config), load_site(tmp_path / "slurm.yaml")
    if refused is None:
        check_pipeline(pipeline, config, site_)
        return
    with pytest.raises(InputError) as info:
        check_pipeline(pipeline, config, site_)
    message = str(info.value)
    assert "emc stage" in message and refused in message and "mem_per_node_gb" in message, message


@pytest.mark.parametrize("values, words", [
    ({"photon_energy_ev": 6.0}, ["photon_energy_ev", "1000-25000 eV", "did you mean 6000"]),
    ({"detector_distance_m": 300.0}, ["detector_distance_m", "did you mean 0.3"]),
    ({"pixel_size_m": 0.512}, ["pixel_size_m", "did you mean 0.000512"]),
    ({"wavelength_m": 6.2}, ["wavelength_m", "did you mean 6.2e-10"]),
])
def test_implausible_physics_warns_with_the_range(values, words, caplog):
    lines = estimates.warn_implausible(values, "p.yaml")
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert "p.yaml: geometry." in caplog.text


def test_plausible_physics_is_quiet():
    for energy in (1000.0, 6000.0, 12400.0, 25000.0):
        assert estimates.implausible({"photon_energy_ev": energy, "detector_distance_m": 0.15,
                                      "pixel_size_m": 200e-6, "wavelength_m": 2e-10}) == []


# ---------------------------------------------------------------- the full passes and check_reference

def test_block_check_agrees_with_the_dense_reference():
    """cxi._block_ok (min/max of the unmasked values) says "bad" exactly when the dense reference refuses."""
    from spibatch.io.cxi import _block_ok, _to_counts

    rng = np.random.default_rng(3)
    for trial in range(300):
        block = (rng.normal(2.0, 3.0, size=(4, 30)) * rng.choice([1, 10, 1e9])).astype(rng.choice([np.float32,
                                                                                                   np.float64]))
        if trial % 7 == 0:
            block[rng.integers(4), rng.integers(30)] = rng.choice([np.nan, np.inf, -np.inf])
        bad = rng.random(30) < 0.3 if trial % 2 else None
        adu, clip = float(rng.choice([0.5, 1.0, 25.0])), bool(trial % 3 == 0)
        try:
            _to_counts(block, 0, bad, adu, clip, "x.cxi", "data")
            reference = True
        except InputError:
            reference = False
        assert _block_ok(block, None if bad is None else ~bad, adu, clip) == reference, trial


def test_check_photons_reads_every_frame_to_the_last_block(shared_datasets, tmp_path):
    """check_photons reads every frame, in blocks: a bad pixel index in the medium set's very last frame (the
    last of its blocks) is found and named.  (Its speed, ~0.1 s against a 16 s EMC iteration, is a benchmark's
    number, not this test's.)"""
    from spibatch.io.dragonfly import check_photons, read_photons, write_photons

    path = shared_datasets / "dragonfly-medium" / "photons.emc"
    assert check_photons(path) == (4000, 22500)
    photons = read_photons(path, 3990, 4000)
    write_photons(tmp_path / "p.h5", photons)
    with h5py.File(tmp_path / "p.h5", "r+") as f:
        last = f["place_ones"][9]
        f["place_ones"][9] = np.append(last, 22500).astype(last.dtype)       # one past num_pix, in frame 9 only
    with pytest.raises(InputError, match="frame 9"):
        check_photons(tmp_path / "p.h5", chunk_frames=4)


def test_check_reference(tmp_path):
    from spibatch.io.results import check_reference

    good = tmp_path / "truth.h5"
    builders.write_volume(good, "density", builders.good_density(), density_voxel_size_m=1e-9)
    volume, voxel = check_reference(good)
    assert volume.shape == (11, 11, 11) and volume.dtype == np.float64 and voxel == 1e-9
    assert check_reference(good, 2e-9)[1] == 1e-9      # the option is for files that do not record a voxel
    assert check_reference(good, grid=(11, 1e-9))[0].shape == (11, 11, 11)

    def refused(path, *words, **kwargs):
        with pytest.raises(InputError) as info:
            check_reference(path, **kwargs)
        assert all(w in str(info.value) for w in words) and str(path) in str(info.value), str(info.value)

    refused(good, "validation.reference_voxel_size_m", voxel_size_m=float("nan"))
    refused(good, "--truth-voxel-size-m", voxel_size_m=-1.0, voxel_field="--truth-voxel-size-m")
    refused(good, "spans", grid=(9, 1e-9))
    refused(good, "spans", grid=(15, 0.5e-9))
    refused(tmp_path / "gone.h5", "file not found")
    refused(tmp_path, "directory")
    for name, make, words in [
            ("nan.h5", lambda p: builders.write_volume(p, "density", np.full((5, 5, 5), np.nan)), ["NaN"]),
            ("zero.h5", lambda p: builders.write_volume(p, "density", np.zeros((5, 5, 5))), ["zero everywhere"]),
            ("flat.h5", lambda p: builders.write_volume(p, "density", np.ones((5, 5, 6))), ["cubic"]),
            ("nodensity.h5", lambda p: builders.write_volume(p, "intensity", np.ones((5, 5, 5))), ["density"]),
            ("voxel.h5", lambda p: builders.write_volume(p, "density", np.ones((5, 5, 5)), density_voxel_size_m=-1.0),
             ["density_voxel_size_m"]),
            ("huge.h5", lambda p: builders.declared_volume("density", (2000, 2000, 2000))(p, None), ["2000^3"]),
            ("junk.mrc", lambda p: p.write_text("not an MRC\n"), ["not a valid MRC"]),
            ("size.bin", lambda p: p.write_bytes(b"\0" * 100), ["float64 cube"]),
            ("vol.txt", lambda p: p.write_text("1\n"), ["unknown volume format"])]:
        make(tmp_path / name)
        refused(tmp_path / name, *words)
    builders.mrc_variant(builders.good_density(), voxel=(10.0, 10.0, 10.0))(tmp_path / "t.mrc", None)
    assert check_reference(tmp_path / "t.mrc")[1] == pytest.approx(1e-9)


def test_a_local_hpc_site_without_mpi_is_judged_as_one_process(emc_small, tmp_path):
    """The review: `local.mpi: off` runs HPC-mode EMC as one process, but the memory check counted the site's 8
    workers as MPI ranks (a 371^3 model: 24.8 GiB asked on this 23.5 GiB box); with MPI it counts the ranks."""
    from spibatch.backends import load_site
    from spibatch.stages.checks import budget_for

    (tmp_path / "off.yaml").write_text("provider: local\nworkers: 8\nemc_mode: hpc\nlocal: {mpi: 'off', cores: 8}\n")
    (tmp_path / "htc.yaml").write_text("provider: local\nworkers: 8\nemc_mode: htc\nlocal: {cores: 8}\n")
    off, htc = budget_for(load_site(tmp_path / "off.yaml")), budget_for(load_site(tmp_path / "htc.yaml"))
    assert off.sharing() == {"ranks": 1} and htc.sharing() == {"workers": 8} and htc.sharing(shards=3) == {"workers": 3}
    assert estimates.emc(371, 1000, 100, 100, 500, 10, **off.sharing()).bytes < 3 * 10 ** 9


def test_the_emc_disk_check_counts_the_checkpoint_and_the_htc_scratch(emc_small, tmp_path, monkeypatch):
    """The fault audit: a 50 MB disk held the run's outputs by the check, and the HTC scratch of one iteration
    (each shard's sums, the reduced totals, the model sent out) filled it in iteration 3.  The check counts
    them now, and the checkpoint's two copies in every mode."""
    from platform_helpers import write_pipeline
    from spibatch.config import load_pipeline
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import photons_info
    from spibatch.layout import RunLayout
    from spibatch.stages.emc import check_output_disk

    config = write_pipeline(tmp_path, emc_small)
    pipeline = load_pipeline(config)
    run = RunLayout(tmp_path / "run")
    run.emc.mkdir(parents=True)
    m = Detector.read(emc_small["detector"]).model_size()
    frames = photons_info(emc_small["photons"])[0]
    shards = -(-frames // pipeline.emc.frames_per_shard)
    outputs = pipeline.emc.iterations * (4 * m ** 3 + 68 * frames)
    scratch = (shards * 8 + 8) * m ** 3
    assert scratch > 16 * m ** 3
    monkeypatch.setattr(estimates, "free_disk", lambda folder: outputs + (16 * m ** 3 + scratch) // 2)
    check_output_disk(run, pipeline, emc_small["photons"], emc_small["detector"])
    with pytest.raises(InputError, match="with the HTC scratch of an iteration"):
        check_output_disk(run, pipeline, emc_small["photons"], emc_small["detector"], htc=True)
    monkeypatch.setattr(estimates, "free_disk", lambda folder: outputs + 15 * m ** 3)
    with pytest.raises(InputError, match="with the checkpoint"):
        check_output_disk(run, pipeline, emc_small["photons"], emc_small["detector"])
