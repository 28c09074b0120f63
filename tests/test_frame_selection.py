"""Several photons files, a frame blacklist and Dragonfly's selection (:mod:`spibatch.io.frame_selection`).

The reference for every mode: EMC on one photons file holding just the kept frames, in order (written with
``Photons.take``).  Gathering the frames must change nothing else: the model is the same bit for bit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from platform_helpers import LOCAL_HTC, env, markers, spibatch, write_site
from spibatch.io.dragonfly import read_photons, write_photons
from spibatch.io.frame_selection import apply_selection, read_blacklist, read_list

SPLIT = 100       # frames of the first file; the second holds the other 140 of emc_small's 240


def pipeline(folder: Path, detector: Path, **emc) -> Path:
    settings = {"detector": detector, "num_div": 2, "iterations": 3, "frames_per_shard": 60, **emc}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(["name: frames", "emc:"] + [f"  {k}: {v}" for k, v in settings.items()]) + "\n")
    return path


def model(run: Path) -> np.ndarray:
    with h5py.File(run / "emc" / "checkpoint.h5") as f:
        return f["model"][()]


@pytest.fixture(scope="module")
def split_set(emc_small, tmp_path_factory) -> dict:
    """emc_small's 240 frames as two files in a list, a blacklist leaving out a quarter of them, and the kept
    frames in one file (the reference); a ``spibatch emc`` of the reference."""
    folder = tmp_path_factory.mktemp("split")
    whole = read_photons(emc_small["photons"])
    (folder / "data").mkdir()
    write_photons(folder / "data" / "a.h5", whole.select(0, SPLIT))
    write_photons(folder / "data" / "b.h5", whole.select(SPLIT, whole.num_frames))
    (folder / "data" / "files.txt").write_text("# two runs\na.h5\n\nb.h5\n")
    left_out = np.random.default_rng(5).random(whole.num_frames) < 0.25
    (folder / "blacklist.txt").write_text("\n".join(str(int(x)) for x in left_out) + "\n")
    kept = np.flatnonzero(~left_out)
    write_photons(folder / "kept.h5", whole.take(kept))
    reference = folder / "reference"
    done = spibatch("emc", pipeline(reference, emc_small["detector"], photons=folder / "kept.h5"), "--out",
                    reference / "run", cwd=folder, NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    return {"folder": folder, "kept": kept, "reference": reference / "run", "detector": emc_small["detector"],
            "list": folder / "data" / "files.txt", "blacklist": folder / "blacklist.txt",
            "files": [folder / "data" / "a.h5", folder / "data" / "b.h5"]}


def listed(split_set, folder: Path, **emc) -> Path:
    return pipeline(folder, split_set["detector"], photons_list=split_set["list"],
                    blacklist_file=split_set["blacklist"], **emc)


def test_a_list_and_a_blacklist_give_the_model_of_the_kept_frames_in_one_file(split_set, tmp_path):
    done = spibatch("emc", listed(split_set, tmp_path), "--out", tmp_path / "run", cwd=tmp_path,
                    NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.array_equal(model(tmp_path / "run"), model(split_set["reference"]))
    kept = split_set["kept"]
    with h5py.File(tmp_path / "run" / "emc" / "photons.h5") as f:   # where each of EMC's frames came from
        assert [Path(p) for p in f["files"].asstr()[()]] == split_set["files"]
        assert np.array_equal(f["source_index"][()], kept)
        assert np.array_equal(f["source_file"][()], (kept >= SPLIT).astype(int))
        assert np.array_equal(f["source_frame"][()], np.where(kept >= SPLIT, kept - SPLIT, kept))
    with h5py.File(tmp_path / "run" / "emc" / "output_003.h5") as f:
        assert len(f["scale"]) == len(kept)
    assert "2 photons files, 240 frames" in (tmp_path / "run" / "stages" / "emc.log").read_text()
    assert f"({len(kept)} of 240 frames of 2 photons files: " in done.stdout     # the run's summary says so


def test_a_list_of_files_in_the_yaml_is_one_data_set(split_set, emc_small, tmp_path):
    files = "[" + ", ".join(str(p) for p in split_set["files"]) + "]"
    done = spibatch("emc", pipeline(tmp_path, split_set["detector"], photons=files), "--out", tmp_path / "run",
                    cwd=tmp_path, NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    whole = tmp_path / "whole"
    done = spibatch("emc", pipeline(whole, split_set["detector"], photons=emc_small["photons"]), "--out",
                    whole / "run", cwd=tmp_path, NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.array_equal(model(tmp_path / "run"), model(whole / "run"))


def test_one_file_in_a_list_is_read_where_it_is(split_set, tmp_path):
    done = spibatch("emc", pipeline(tmp_path, split_set["detector"], photons=f"[{split_set['folder'] / 'kept.h5'}]"),
                    "--out", tmp_path / "run", cwd=tmp_path, NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "run" / "emc" / "photons.h5").exists()
    assert np.array_equal(model(tmp_path / "run"), model(split_set["reference"]))


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not found")
def test_two_mpi_ranks_read_the_gathered_frames(split_set, tmp_path):
    pytest.importorskip("mpi4py")
    done = subprocess.run([shutil.which("mpirun"), "-n", "2", "--oversubscribe", sys.executable, "-m", "spibatch",
                           "emc", str(listed(split_set, tmp_path)), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=env(NUMBA_NUM_THREADS="1", OMPI_MCA_rmaps_base_oversubscribe="1"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ours, reference = model(tmp_path / "run"), model(split_set["reference"])
    assert np.abs(ours - reference).max() <= 1e-10 * np.abs(reference).max()


def test_htc_tasks_read_the_gathered_frames(split_set, tmp_path):
    pytest.importorskip("parsl")
    site = write_site(tmp_path, "local-htc", LOCAL_HTC)
    done = spibatch("run", listed(split_set, tmp_path), "--site", site, "--out", tmp_path / "run", cwd=tmp_path,
                    NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert markers(tmp_path / "run")["emc"]["emc_mode"] == "htc"
    assert np.array_equal(model(tmp_path / "run"), model(split_set["reference"]))


def test_a_resume_with_another_blacklist_is_refused_and_keeps_the_run(split_set, tmp_path):
    config = listed(split_set, tmp_path, iterations=2)
    done = spibatch("emc", config, "--out", tmp_path / "run", cwd=tmp_path, NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    gathered = tmp_path / "run" / "emc" / "photons.h5"
    before = {p.name: p.read_bytes() for p in (gathered, tmp_path / "run" / "emc" / "checkpoint.h5")}
    changed = tmp_path / "other.txt"
    values = split_set["blacklist"].read_text().split()
    changed.write_text("\n".join(["1"] + values[1:]) + "\n")   # frame 0 was kept
    assert values[0] == "0"
    config.write_text(config.read_text().replace(str(split_set["blacklist"]), str(changed)))
    done = spibatch("emc", config, "--resume", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "leave out other frames" in done.stderr, done.stderr
    assert {p.name: p.read_bytes() for p in (gathered, tmp_path / "run" / "emc" / "checkpoint.h5")} == before


def test_a_resume_reuses_the_gathered_frames(split_set, tmp_path):
    config = listed(split_set, tmp_path, iterations=2)
    assert spibatch("emc", config, "--out", tmp_path / "run", cwd=tmp_path).returncode == 0
    gathered = tmp_path / "run" / "emc" / "photons.h5"
    stamp = gathered.stat().st_mtime_ns
    config.write_text(config.read_text().replace("iterations: 2", "iterations: 3"))
    done = spibatch("emc", config, "--resume", tmp_path / "run", cwd=tmp_path, NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert gathered.stat().st_mtime_ns == stamp
    assert np.array_equal(model(tmp_path / "run"), model(split_set["reference"]))


def test_selection_keeps_every_other_frame_not_blacklisted_as_dragonfly():
    left_out = np.array([0, 1, 0, 0, 1, 0, 0], bool)      # good frames: 0, 2, 3, 5, 6
    assert np.flatnonzero(~apply_selection(left_out, "odd_only")).tolist() == [0, 3, 6]
    assert np.flatnonzero(~apply_selection(left_out, "even_only")).tolist() == [2, 5]
    assert apply_selection(left_out, None) is left_out


def test_the_list_is_read_relative_to_its_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "list.txt"
    path.write_text("  r1.h5  \n# comment\n\n/abs/r2.h5\n")
    assert read_list(path) == [tmp_path / "sub" / "r1.h5", Path("/abs/r2.h5")]


@pytest.mark.parametrize("text, problem", [
    ("0\n1\n", "holds 2 values for 3 frames"),
    ("0\n2\n0\n", "value 2 (frame 1) is '2', not 0 or 1"),
    ("0 1 x\n", "value 3 (frame 2) is 'x'"),
])
def test_a_bad_blacklist_is_one_line_naming_the_value(tmp_path, text, problem):
    from spibatch.errors import InputError

    path = tmp_path / "bl.txt"
    path.write_text(text)
    with pytest.raises(InputError, match="emc.blacklist_file") as caught:
        read_blacklist(path, 3)
    assert problem in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("case, field, problem", [
    ("all_left_out", "emc.blacklist_file", "every frame left out"),
    ("odd_of_one", "emc.selection", "even_only leaves no frame of the 1 not blacklisted"),
    ("no_frames", "emc.photons_list", "the 1 photons file(s) hold no frame"),
    ("missing_listed", "emc.photons_list", "file not found"),
    ("empty_list", "emc.photons_list", "names no photons file"),
    ("other_detector", "emc.photons_list", "16 pixels a frame, but"),
    ("both", "emc.photons_list", "not both"),
    ("empty_yaml_list", "emc.photons", "an empty list"),
    ("blacklist_without_photons", "blacklist_file", "give emc.photons"),
    ("short_blacklist", "emc.blacklist_file", "holds 239 values for 240 frames"),
])
def test_bad_frame_inputs_are_one_line_before_any_run_folder(split_set, tmp_path, case, field, problem):
    folder = split_set["folder"]
    values = split_set["blacklist"].read_text().split()
    files = tmp_path / "files.txt"
    emc = {"photons_list": files, "blacklist_file": split_set["blacklist"]}
    files.write_text("\n".join(str(p) for p in split_set["files"]) + "\n")
    if case == "all_left_out":
        (tmp_path / "bl.txt").write_text("1\n" * 240)
        emc["blacklist_file"] = tmp_path / "bl.txt"
    elif case == "odd_of_one":
        (tmp_path / "bl.txt").write_text("0\n" + "1\n" * 239)
        emc.update(blacklist_file=tmp_path / "bl.txt", selection="even_only")
    elif case == "no_frames":
        empty = tmp_path / "empty.h5"
        write_photons(empty, read_photons(split_set["files"][0]).select(0, 0))
        files.write_text(f"{empty}\n")
        emc.pop("blacklist_file")
    elif case == "missing_listed":
        files.write_text(f"{split_set['files'][0]}\nnot_there.h5\n")
    elif case == "empty_list":
        files.write_text("# nothing\n")
    elif case == "other_detector":
        small = tmp_path / "small.h5"
        from spibatch.photons import Photons

        write_photons(small, Photons.from_dense(np.ones((2, 16), int)))
        files.write_text(f"{split_set['files'][0]}\n{small}\n")
    elif case == "both":
        emc["photons"] = folder / "kept.h5"
    elif case == "empty_yaml_list":
        emc = {"photons": "[]"}
    elif case == "blacklist_without_photons":
        emc = {"blacklist_file": split_set["blacklist"]}
    elif case == "short_blacklist":
        (tmp_path / "bl.txt").write_text("\n".join(values[:-1]) + "\n")
        emc["blacklist_file"] = tmp_path / "bl.txt"
    done = spibatch("emc", pipeline(tmp_path / "cfg", split_set["detector"], **emc), "--out", tmp_path / "run",
                    cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip()
    assert "\n" not in line and field in line and problem in line, line
    assert not (tmp_path / "run").exists()


def test_a_gathering_that_cannot_fit_is_one_line_before_it_writes(split_set, tmp_path):
    """The gathered copy (~0.5 MB here) on a 300 KB disk: one line naming the space, before any frame is written
    (before, the writer's own room check stopped it mid-copy, after the run had begun)."""
    from fault_helpers import small_disk

    with small_disk(tmp_path, 300 << 10) as (disk, fsize):
        if fsize is not None:
            pytest.skip("mounting a small tmpfs is not allowed here: the check reads the real free space")
        done = spibatch("emc", listed(split_set, tmp_path), "--out", disk / "run", cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.startswith("spibatch: error")]
        assert len(lines) == 1 and "kept frames need about" in lines[0] and "free" in lines[0], done.stderr
        assert not (disk / "run" / "emc" / "photons.h5").exists()
        assert not list((disk / "run" / "emc").glob(".*photons*"))   # no temporary copy left either


def test_thousands_of_listed_files_are_gathered(split_set, tmp_path):
    """The review: the file list was an HDF5 attribute, which cannot pass 64 KiB: a list of ~4 000 files failed after
    the run began (OSError: object header message is too large).  Now a dataset: 500 long names."""
    from spibatch.io.frame_selection import FrameSelection

    import shutil

    one = tmp_path / "one.h5"
    write_photons(one, read_photons(split_set["files"][0]).select(0, 1))
    listed = [tmp_path / f"{'a-file-of-one-frame-with-a-long-name-as-beamtime-files-have-' * 4}{k:03d}.h5"
              for k in range(500)]        # ~300 bytes a name: twice the 64 KiB
    for path in listed:                   # (files of their own: a file listed twice is refused)
        shutil.copyfile(one, path)
    selection = FrameSelection.of_files(listed)
    selection.write(tmp_path / "photons.h5")
    assert selection.matches(tmp_path / "photons.h5")
    with h5py.File(tmp_path / "photons.h5") as f:
        assert len(f["files"]) == 500 and len(f["place_ones"]) == 500
        assert sum(len(name) for name in f["files"].asstr()[()]) > 2 * 2 ** 16
        assert np.array_equal(f["source_file"][()], np.arange(500))


def test_a_run_gathered_when_the_file_list_was_an_attribute_still_matches(split_set, tmp_path):
    """The review: runs gathered before the list became a dataset could not be resumed (refused as if the frames
    had changed)."""
    from spibatch.io.frame_selection import FrameSelection

    selection = FrameSelection.of_files(split_set["files"])
    selection.write(tmp_path / "photons.h5")
    with h5py.File(tmp_path / "photons.h5", "a") as f:                  # as the earlier version wrote it
        names = list(f["files"].asstr()[()])
        del f["files"]
        f.attrs["files"] = names
    assert selection.matches(tmp_path / "photons.h5")
    assert not FrameSelection.of_files(split_set["files"][::-1]).matches(tmp_path / "photons.h5")
