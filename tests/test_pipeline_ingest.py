"""The pipeline's ingest stage on measured data: a CXI stack (with its own geometry, or emc.detector).

A CXI stack made of the emc_small photons (times an ADU gain, plus read noise well below half
a photon) must give the very photons, and the EMC model of the photons pipeline, bit for bit.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from platform_helpers import LOCAL_HTC, final_model, markers, spibatch, write_site
from test_io_cxi import GEOMETRY, expected_counts, make_cxi

ADU = 20.0

def cxi_of(photons_path, path):
    """The photons file as a (frames, 64, 64) float32 ADU stack with read noise of up to 0.4 photon."""
    from spibatch.io.dragonfly import read_photons

    dense = read_photons(photons_path).to_dense()
    side = int(round(np.sqrt(dense.shape[1])))
    rng = np.random.default_rng(3)
    stack = (dense * ADU + rng.uniform(-0.4 * ADU, 0.4 * ADU, dense.shape)).astype(np.float32).reshape(-1, side, side)
    with h5py.File(path, "w") as f:
        f["/entry_1/data_1/data"] = stack
    return dense


def ingest_pipeline(folder, cxi, detector=None, extra: str = "") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    detector_line = f"detector: {detector}, " if detector else ""
    path = folder / "pipeline.yaml"
    path.write_text(f"name: cxi-test\ningest: {{cxi: {cxi}, adu_per_photon: {ADU}, chunk_frames: 64}}\n"
                    f"emc: {{{detector_line}num_div: 2, iterations: 3, frames_per_shard: 60}}\n{extra}")
    return path


def test_cxi_pipeline_gives_the_photons_and_the_model_of_the_photons_pipeline(emc_small, emc_config, tmp_path):
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    dense = cxi_of(emc_small["photons"], tmp_path / "frames.cxi")
    pipeline = ingest_pipeline(tmp_path, tmp_path / "frames.cxi", emc_small["detector"])
    site = write_site(tmp_path, "local-htc", LOCAL_HTC)
    run = tmp_path / "run"
    done = spibatch("run", pipeline, "--site", site, "--out", run, "--until", "emc", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(markers(run)) == ["emc", "ingest"]
    assert markers(run)["ingest"]["outputs"] == {"photons": str(run / "ingest" / "photons.emc")}   # emc.detector given
    from spibatch.io.dragonfly import read_photons

    assert np.array_equal(read_photons(run / "ingest" / "photons.emc").to_dense(), dense)
    assert str(tmp_path / "frames.cxi") in json.loads((run / "provenance.json").read_text())["inputs"]

    serial = spibatch("emc", emc_config(tmp_path / "serial"), "--out", tmp_path / "serial" / "run",
                      cwd=tmp_path, NUMBA_NUM_THREADS="1")
    assert serial.returncode == 0, serial.stderr[-2000:]
    assert np.array_equal(final_model(run / "emc"), final_model(tmp_path / "serial" / "run" / "emc"))


def test_ingest_stage_builds_the_detector_from_the_cxi_geometry(tmp_path):
    from spibatch.config import load_pipeline
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import read_photons
    from spibatch.kernels.device import CPU
    from spibatch.layout import RunLayout
    from spibatch.stages import ingest, inputs

    bad = np.zeros((8, 8), np.uint8)
    bad[2, 3] = 1
    data = make_cxi(tmp_path / "run.cxi", frame_shape=(8, 8), num_frames=9, adu=ADU, mask=bad, geometry=GEOMETRY)
    pipeline = load_pipeline(ingest_pipeline(tmp_path, tmp_path / "run.cxi",
                                             extra="phasing: {crop_to: null}\n"))
    pipeline.ingest.beamstop_radius_pixels = 1.5
    run = RunLayout(tmp_path / "run")
    outputs = ingest.run(run, pipeline, CPU)
    assert outputs == {"photons": run.photons("ingest"), "detector": run.detector("ingest")}
    assert np.array_equal(read_photons(run.photons("ingest")).to_dense(), expected_counts(data, ADU, bad))
    written = Detector.read(run.detector("ingest"))
    built = Detector.from_cxi(tmp_path / "run.cxi", beamstop_radius_pixels=1.5)
    assert np.array_equal(written.q_voxels, built.q_voxels) and np.array_equal(written.mask, built.mask)
    assert written.mask[2 * 8 + 3] == 2 and (written.mask == 2).sum() > 1          # the CXI mask + the beam stop
    assert inputs.photons_and_detector(run, pipeline) == (run.photons("ingest"), run.detector("ingest"))


def test_the_cxi_mask_reaches_emc_with_a_given_detector(tmp_path):
    """emc.detector given and a CXI mask: the masked pixels were 0 in the photons but in use (mask 0) in the detector
    EMC read -- measured zeros, silently (an audit).  ingest/detector.h5 is the given one with them excluded."""
    from spibatch.config import load_pipeline
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import write_detector
    from spibatch.kernels.device import CPU
    from spibatch.layout import RunLayout
    from spibatch.stages import ingest, inputs

    bad = np.zeros((8, 8), np.uint8)
    bad[2, 3] = bad[5, 0] = 1
    make_cxi(tmp_path / "run.cxi", frame_shape=(8, 8), num_frames=9, adu=ADU, mask=bad, geometry=GEOMETRY)
    given = Detector.from_cxi(tmp_path / "run.cxi")
    given.mask[:] = 0
    write_detector(tmp_path / "given.h5", given)
    pipeline = load_pipeline(ingest_pipeline(tmp_path, tmp_path / "run.cxi", tmp_path / "given.h5"))
    run = RunLayout(tmp_path / "run")
    outputs = ingest.run(run, pipeline, CPU)
    assert outputs["detector"] == run.detector("ingest")
    used = Detector.read(inputs.photons_and_detector(run, pipeline)[1])
    assert np.flatnonzero(used.mask == 2).tolist() == [2 * 8 + 3, 5 * 8 + 0]
    np.testing.assert_array_equal(used.q_voxels, given.q_voxels)


def test_cxi_without_geometry_or_detector_is_refused_with_one_line(tmp_path):
    make_cxi(tmp_path / "plain.cxi", frame_shape=(8, 8))
    other = tmp_path / "det64.h5"
    from spibatch.io.dragonfly import write_detector
    from spibatch.config import Geometry

    write_detector(other, (Geometry(detector_pixels=16, wavelength_m=6.2e-10)).detector())
    cases = {
        "no geometry": (ingest_pipeline(tmp_path / "a", tmp_path / "plain.cxi"), "emc.detector"),
        "pixel count": (ingest_pipeline(tmp_path / "b", tmp_path / "plain.cxi", other), "num_pix = 64"),
        "missing file": (ingest_pipeline(tmp_path / "c", tmp_path / "missing.cxi"), "missing.cxi"),
        "both sources": (ingest_pipeline(tmp_path / "d", tmp_path / "plain.cxi",
                                         extra="simulation: {pdb: x.pdb, num_patterns: 10}\n"), "not both"),
        "photons too": (ingest_pipeline(tmp_path / "e", tmp_path / "plain.cxi").parent / "pipeline.yaml",
                        "leave emc.photons out"),
    }
    photons_too = cases["photons too"][0]
    photons_too.write_text(photons_too.read_text().replace("emc: {", "emc: {photons: p.h5, "))
    for name, (pipeline, expected) in cases.items():
        done = spibatch("run", pipeline, "--out", pipeline.parent / "run", cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], (name, done.stderr[-2000:])
        assert not (pipeline.parent / "run").exists() and not (pipeline.parent / "runs").exists(), name
