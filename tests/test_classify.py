"""2-D classification before EMC (:mod:`spibatch.classify`, ``spibatch classify``).

A mixture made here, not the benchmark's: the small set's intensity (A), the same particle 1.4x larger (B: its
intensity at 1.4 q), weak hits of A (D) and frames of a radial background alone (E).  The suggestion must keep
the hits of A and leave the others out, and EMC must read the blacklist it writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from platform_helpers import spawned, spibatch
from spibatch.detector import Detector
from spibatch.io.dragonfly import write_photons
from spibatch.photons import Photons

SIZES = {"A": 700, "B": 160, "D": 90, "E": 80}


class _Blocks(list):
    def append(self, photons):   # simulate_patterns' writer
        super().append(photons)


def _hits(volume, detector, n, photons, seed) -> Photons:
    from spibatch.sim.patterns import mean_photons_scale, simulate_patterns

    out = _Blocks()
    simulate_patterns(volume, detector, num_patterns=n, scale=mean_photons_scale(volume, detector, photons),
                      fluence_jitter=0.2, seed=seed, chunk_frames=512, writer=out)
    return Photons.concatenate(out)


@pytest.fixture(scope="module")
def mixture(small_dataset, tmp_path_factory) -> dict:
    from scipy.ndimage import map_coordinates

    from spibatch.sim.background import radial_background

    detector = Detector.read(small_dataset / "det_sim.h5")
    a = np.fromfile(small_dataset / "intensities.bin").reshape(91, 91, 91)
    centre = (np.array(a.shape) - 1) / 2
    grid = np.indices(a.shape).reshape(3, -1).astype(np.float64)
    b = map_coordinates(a, (grid - centre[:, None]) * 1.4 + centre[:, None], order=1, cval=0.0).reshape(a.shape)
    rng = np.random.default_rng(11)
    background = radial_background(detector, 900.0, rise=2.0)
    levels = rng.uniform(0.7, 1.3, SIZES["E"])
    parts = [_hits(a, detector, SIZES["A"], 900.0, 1), _hits(b, detector, SIZES["B"], 900.0, 2),
             _hits(a, detector, SIZES["D"], 60.0, 3),
             Photons.from_dense(rng.poisson(np.outer(levels, background)))]
    truth = np.repeat(np.arange(4), list(SIZES.values()))
    order = rng.permutation(len(truth))
    photons = Photons.concatenate(parts).take(order)
    folder = tmp_path_factory.mktemp("classify")
    write_photons(folder / "one.h5", photons.select(0, 500))
    write_photons(folder / "two.h5", photons.select(500, photons.num_frames))
    return {"files": [folder / "one.h5", folder / "two.h5"], "truth": truth[order], "detector": detector,
            "detector_path": small_dataset / "det_sim.h5", "photons": photons, "folder": folder}


def test_the_suggestion_keeps_the_hits_and_leaves_out_the_rest(mixture):
    from spibatch.classify import classify

    photons, truth = mixture["photons"], mixture["truth"]
    blocks = [photons.select(a, min(a + 300, photons.num_frames)) for a in range(0, photons.num_frames, 300)]
    found = classify(blocks, mixture["detector"], num_classes=5, seed=0)
    kept = np.isin(found.labels, found.suggested)
    recall = kept[truth == 0].mean()
    others = {name: kept[truth == k].mean() for k, name in enumerate(SIZES) if k}
    print(f"recall of A {recall:.3f}; kept of the others {others}; classes {[s['frames'] for s in found.summaries]}")
    assert recall >= 0.9                                      # measured 0.999
    assert all(share <= 0.05 for share in others.values())   # measured B 0.000, D 0.000, E 0.000
    again = classify(iter(blocks), mixture["detector"], num_classes=5, seed=0)
    assert np.array_equal(again.labels, found.labels)       # the same seed, the same classes


def test_hits_of_one_particle_are_all_kept(small_dataset):
    """The shared small set: 1000 hits of one particle, fluence jitter spreading their photons: the mixture splits
    them by photons and noise, and the suggestion keeps every class (an upper photon bound left out 10 % of the
    medium set's hits before)."""
    from spibatch.classify import classify
    from spibatch.io.dragonfly import read_photons

    found = classify([read_photons(small_dataset / "photons.emc")], Detector.read(small_dataset / "det_sim.h5"), 5)
    assert found.suggested == [0, 1, 2, 3, 4], [(s["distance"], s["median_photons"]) for s in found.summaries]


def test_sparse_and_empty_frames_and_small_files_classify(small_dataset):
    """A band where no frame has two photons in one shell (a file of one empty frame; frames of 3 photons) made the
    contrast 0/0 and the principal components failed (a traceback); a feature constant over the largest class made
    every other class's distance ~1e7 (half of one population's frames left out).  The contrast's prior is now the
    whole set's, so a frame's features do not depend on the blocks it was read in."""
    from spibatch.classify import classify
    from spibatch.io.dragonfly import read_photons

    detector = Detector.read(small_dataset / "det_sim.h5")
    frames = read_photons(small_dataset / "photons.emc", 0, 300)
    empty = Photons.from_dense(np.zeros((1, frames.num_pix), int))
    whole = classify([frames.select(0, 100), empty, frames.select(100, 300)], detector, 3)
    assert np.isfinite(whole.features["contrast"]).all() and len(whole.labels) == 301
    again = classify([Photons.concatenate([frames.select(0, 100), empty, frames.select(100, 300)])], detector, 3)
    for name in ("counts", "profile", "contrast", "angular"):
        assert np.allclose(whole.features[name], again.features[name], rtol=1e-12, atol=1e-12), name
    rng = np.random.default_rng(0)
    dense = np.zeros((200, frames.num_pix), int)
    for row in dense:
        row[rng.integers(0, frames.num_pix, 3)] = 1
    sparse = classify([Photons.from_dense(dense)], detector, 5)
    assert sparse.suggested == [0, 1, 2, 3, 4], [s["distance"] for s in sparse.summaries]


def test_the_command_writes_the_blacklist_emc_reads(mixture, tmp_path):
    out = tmp_path / "classes"
    done = spibatch("classify", *mixture["files"], "--detector", mixture["detector_path"], "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    labels = np.loadtxt(out / "classes.txt", dtype=int)
    left_out = np.loadtxt(out / "blacklist.txt", dtype=int)
    summary = json.loads((out / "classes.json").read_text())
    assert len(labels) == len(left_out) == len(mixture["truth"]) == summary["frames"]
    assert np.array_equal(left_out == 0, np.isin(labels, summary["kept"])) and summary["kept"] == summary["suggested"]
    assert (out / "classes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "set emc.blacklist_file:" in done.stdout
    listed = tmp_path / "files.txt"       # Dragonfly's in_photons_list: the same frames, the same classes
    listed.write_text("".join(f"{p}\n" for p in mixture["files"]))
    done = spibatch("classify", "--photons-list", listed, "--detector", mixture["detector_path"], "-o",
                    tmp_path / "listed", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "listed" / "classes.txt").read_bytes() == (out / "classes.txt").read_bytes()
    chosen = tmp_path / "chosen"          # the user's own choice of classes
    done = spibatch("classify", *mixture["files"], "--detector", mixture["detector_path"], "-o", chosen,
                    "--keep", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.array_equal(np.loadtxt(chosen / "blacklist.txt", dtype=int) == 0, labels == 0)

    config = tmp_path / "pipeline.yaml"
    files = ", ".join(str(p) for p in mixture["files"])
    config.write_text(f"name: kept\nemc:\n  photons: [{files}]\n  detector: {mixture['detector_path']}\n"
                      f"  blacklist_file: {out / 'blacklist.txt'}\n  num_div: 2\n  iterations: 2\n")
    done = spibatch("emc", config, "--out", tmp_path / "run", cwd=tmp_path, NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-2000:]
    import h5py

    with h5py.File(tmp_path / "run" / "emc" / "output_002.h5") as f:
        assert len(f["scale"]) == int((left_out == 0).sum())


@pytest.mark.parametrize("case, problem", [
    ("keep_out_of_range", "--keep: '0,7' is not a list of classes among 0..4"),
    ("keep_superscript", "--keep: '\u00b2' is not a list of classes among 0..4"),    # isdigit() but not int()
    ("keep_huge", "--keep: '9999999999999999999999999999999999999999'... is not a list of classes"),
    ("keep_empty_classes", "--keep: classes 3,4 hold no frame (frames per class: 0: 60, "),
    ("list_nul", "--photons-list: line 2 holds a NUL character: not a file name"),
    ("out_not_empty", "--out: exists: nothing is overwritten"),
    ("other_detector", "4096"),
    ("too_few_frames", "--classes: 30 frames for 5 classes"),
    ("all_empty", "photons: none of the 60 frames has a photon on a pixel used"),
    ("files_and_list", "photons: give the photons files, or --photons-list, not both or neither"),
    ("empty_list", "--photons-list: names no photons file"),
])
def test_bad_classify_inputs_are_one_line_and_write_nothing(mixture, tmp_path, case, problem):
    files, detector, out, extra = list(mixture["files"]), mixture["detector_path"], tmp_path / "out", []
    if case == "keep_out_of_range":
        extra = ["--keep", "0,7"]
    elif case == "keep_superscript":
        extra = ["--keep", "\u00b2"]
    elif case == "keep_huge":
        extra = ["--keep", "9" * 5000]
    elif case == "keep_empty_classes":      # 60 frames alike: one class holds them all
        files = [tmp_path / "alike.h5"]
        dense = mixture["photons"].to_dense(0, 1).repeat(60, axis=0)
        write_photons(files[0], Photons.from_dense(dense))
        extra = ["--keep", "3,4"]
    elif case == "list_nul":
        (tmp_path / "files.txt").write_text(f"{files[0]}\nx\x00y.h5\n")
        extra, files = ["--photons-list", tmp_path / "files.txt"], []
    elif case == "out_not_empty":
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    elif case == "other_detector":
        detector = tmp_path / "det.h5"
        from spibatch.io.dragonfly import write_detector

        write_detector(detector, Detector.flat(8, 1e-3, 0.1, 1e-9))
    elif case in ("files_and_list", "empty_list"):
        (tmp_path / "files.txt").write_text("" if case == "empty_list" else f"{files[0]}\n")
        extra = ["--photons-list", tmp_path / "files.txt"]
        files = files if case == "files_and_list" else []
    elif case == "all_empty":
        files = [tmp_path / "empty.h5"]
        write_photons(files[0], Photons.from_dense(np.zeros((60, mixture["photons"].num_pix), int)))
    elif case == "too_few_frames":
        files = [tmp_path / "few.h5"]
        write_photons(files[0], mixture["photons"].select(0, 30))
    done = spibatch("classify", *files, "--detector", detector, "-o", out, *extra, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip()
    assert "\n" not in line and problem in line, line
    assert not out.exists() or [p.name for p in out.iterdir()] == (["mine.txt"] if case == "out_not_empty" else [])


def _claim_for_ever(out, ready):
    from spibatch.classify_files import claimed

    with claimed(Path(out)):
        ready.set()
        time.sleep(600)


def test_a_folder_is_classified_into_by_one_command_at_a_time(tmp_path):
    """The reviews: two `spibatch classify` into one new folder both passed its emptiness check and the second
    overwrote the first's files; then (a claim file) one that claimed it after the first had finished replaced the
    first's files, and a claim left by a SIGKILLed command refused the folder for ever.  Now a lock on the claim,
    the folder checked again once claimed, and a dead command's claim taken over."""
    import os
    import signal

    from spibatch.classify_files import CLAIM, claimed
    from spibatch.errors import InputError

    out = tmp_path / "new"
    other, ready = spawned(_claim_for_ever, str(out))
    try:
        assert ready
        with pytest.raises(InputError, match="another spibatch classify writes into it now"):
            with claimed(out):
                pass
        os.kill(other.pid, signal.SIGKILL)                                # its claim stays behind
        other.join(30)
        assert [p.name for p in out.iterdir()] == [CLAIM]
        with claimed(out):                                                # taken over
            (out / "classes.txt").write_text("0\n")
        assert [p.name for p in out.iterdir()] == ["classes.txt"]          # the claim is gone once done
        with pytest.raises(InputError, match="exists: nothing is overwritten"):   # a later one: refused
            with claimed(out):
                pass
        assert (out / "classes.txt").read_text() == "0\n"
    finally:
        if other.is_alive():
            other.kill()
    fresh = tmp_path / "other"
    with pytest.raises(RuntimeError):
        with claimed(fresh):
            raise RuntimeError("failed while classifying")
    assert not fresh.exists()                                            # made by it, left as it was


def test_frames_beyond_the_memory_are_one_line_before_the_pass(mixture, monkeypatch):
    """Classifying holds ~2.8 kB a frame (measured at 40 000 and 80 000 frames): 10^7 frames ~30 GB, refused up
    front on a machine without them."""
    from spibatch import classify_files, estimates
    from spibatch.errors import InputError

    monkeypatch.setattr(estimates, "machine_memory", lambda: (200 << 20, "a test's limit"))
    with pytest.raises(InputError, match=r"1,030 frames need about 227 MiB to classify .* this machine has 200 MiB"):
        classify_files.open_frames(mixture["files"], mixture["detector_path"], 5)


def test_features_do_not_depend_on_the_pieces_frames_are_read_in(small_dataset, monkeypatch):
    from spibatch import classify as module
    from spibatch.io.dragonfly import read_photons

    frames = read_photons(small_dataset / "photons.emc", 0, 200)
    tables = module.PixelTables.of(Detector.read(small_dataset / "det_sim.h5"))
    whole = module.frame_features([frames], tables)
    split = module._pieces
    monkeypatch.setattr(module, "_pieces", lambda block: split(block, 5000))   # ~12 frames a piece
    assert len(split(frames, 5000)) > 10
    pieces = module.frame_features([frames], tables)
    for name in whole:
        assert np.allclose(whole[name], pieces[name], rtol=1e-12, atol=1e-12), name
