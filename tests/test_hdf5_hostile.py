"""Crafted HDF5 inputs a review found hanging, crashing or misread (2026-12-07): every reader goes through
``spibatch.io.hdf5.open_hdf5``, which now refuses each with one line.  The opens that hung run in a child
process with a time limit, so that a regression fails instead of hanging the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from spibatch.errors import InputError

OPEN = textwrap.dedent("""
    import sys
    from spibatch.errors import InputError
    from spibatch.io.hdf5 import open_hdf5, require_dataset
    try:
        with open_hdf5(sys.argv[1], "fix it") as f:
            require_dataset(f, "qx", sys.argv[1], "fix it")[()]
    except InputError as exc:
        print(exc)
        sys.exit(2)
""")


def opened(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    """open_hdf5 + reading ``qx`` in a child process (60 s at most: the open of a FIFO blocked for ever)."""
    return subprocess.run([sys.executable, "-c", OPEN, str(path)], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def detector_with(path: Path, make) -> Path:
    with h5py.File(path, "w") as f:
        f["qy"] = np.zeros(16)
        make(f)
    return path


@pytest.mark.parametrize("kind", ["external link", "virtual dataset"])
def test_an_absolute_path_that_is_missing_is_checked_where_hdf5_then_looks(tmp_path, kind):
    """A link (or virtual source) to /nonexistent/dir/fifo: HDF5 then opens `fifo` beside the file, which was not
    checked -- the open blocked in C, beyond SIGTERM (rc 137 after a SIGKILL)."""
    os.mkfifo(tmp_path / "fifo")

    def make(f):
        if kind == "external link":
            f["qx"] = h5py.ExternalLink("/nonexistent/dir/fifo", "/qx")
        else:
            layout = h5py.VirtualLayout((16,), "f8")
            layout[:] = h5py.VirtualSource("/nonexistent/dir/fifo", "qx", shape=(16,))
            f.create_virtual_dataset("qx", layout, fillvalue=0)

    done = opened(detector_with(tmp_path / "det.h5", make), cwd=tmp_path)
    assert done.returncode == 2 and f"{tmp_path / 'fifo'}, which is not a regular file" in done.stdout, done


def test_external_storage_is_checked_in_the_working_folder(tmp_path):
    """HDF5 reads a relative external-storage name from the working folder: a regular file of that name beside
    the HDF5 file passed the check while a FIFO in the working folder hung the read."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.bin").write_bytes(bytes(128))
    os.mkfifo(tmp_path / "raw.bin")
    path = detector_with(tmp_path / "data" / "det.h5", lambda f: f.create_dataset(
        "qx", (16,), "f8", external=[("raw.bin", 0, h5py.h5f.UNLIMITED)]))
    done = opened(path, cwd=tmp_path)
    assert done.returncode == 2 and f"external storage in {tmp_path / 'raw.bin'}, which is not a regular" \
        in done.stdout, done
    done = opened(path, cwd=tmp_path / "data")      # where a regular file is all there is, it is read
    assert done.returncode == 0, done


def test_external_storage_outside_the_files_folder_is_refused(tmp_path):
    """A review: a CXI file whose frames were external storage over /etc/passwd ingested it as photons (its bytes
    as counts, in results people share), without a word.  Raw storage is read from the file's own folder only."""
    from spibatch.io.hdf5 import open_hdf5

    (tmp_path / "data").mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"token=abc" * 16)
    (tmp_path / "data" / "raw.bin").write_bytes(bytes(128))
    for target, refused in ((str(secret), True), (str(tmp_path / "data" / "raw.bin"), False)):
        path = detector_with(tmp_path / "data" / "det.h5", lambda f, t=target: f.create_dataset(
            "qx", (16,), "f8", external=[(t, 0, 128)]))
        if refused:
            with pytest.raises(InputError, match=f"external storage in {secret}, outside the file's own folder"):
                with open_hdf5(path, "fix"):
                    pass
        else:
            with open_hdf5(path, "fix") as f:
                assert f["qx"][()].sum() == 0


def test_missing_external_storage_and_links_are_named(tmp_path):
    """A missing external-storage file read as 'file truncated or corrupt'; a link to a missing file or to a
    file that is not HDF5 as 'dataset missing'."""
    from spibatch.io.hdf5 import open_hdf5, require_dataset

    path = detector_with(tmp_path / "a.h5", lambda f: f.create_dataset(
        "qx", (16,), "f8", external=[("nope.bin", 0, h5py.h5f.UNLIMITED)]))
    with pytest.raises(InputError, match="external storage in nope.bin, which is missing"):
        with open_hdf5(path, "fix"):
            pass
    for target, said in (("nope.h5", "whose file is missing"), ("/etc/passwd", "is not an HDF5 file")):
        path = detector_with(tmp_path / "b.h5", lambda f, t=target: f.__setitem__("qx", h5py.ExternalLink(t, "/qx")))
        with open_hdf5(path, "fix") as f, pytest.raises(InputError, match=f"an external link to {target}:/qx, .*{said}"):
            require_dataset(f, "qx", path, "fix")


def test_a_file_of_too_many_objects_is_refused_not_half_checked(tmp_path, monkeypatch):
    """Past MAX_OBJECTS the walk skipped every further object unchecked: a dataset behind 100,002 empty groups
    kept its data in a FIFO and hung the read."""
    from spibatch.io import hdf5

    monkeypatch.setattr(hdf5, "MAX_OBJECTS", 10)

    def make(f):
        for i in range(12):
            f.create_group(f"a{i:02d}")
        f.create_dataset("qx", (16,), "f8", external=[("elsewhere.bin", 0, h5py.h5f.UNLIMITED)])

    path = detector_with(tmp_path / "many.h5", make)
    with pytest.raises(InputError, match="holds more than 10 objects"):
        with hdf5.open_hdf5(path, "fix"):
            pass


def test_an_object_name_that_is_not_utf8_is_one_line(tmp_path):
    """h5py's name lookups decode names as UTF-8: a dataset named b'\\xff\\xfeZZ' anywhere in a file was a
    UnicodeDecodeError traceback in ingest, validate, phase and emc."""
    from spibatch.io.hdf5 import open_hdf5

    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f["qx"] = np.zeros(16)
        h5py.h5d.create(f.id, b"\xff\xfeZZ", h5py.h5t.NATIVE_DOUBLE, h5py.h5s.create_simple((4,)))
    with pytest.raises(InputError, match=r"not UTF-8 text \(b'\\xff\\xfeZZ' in /\)"):
        with open_hdf5(path, "fix"):
            pass


def test_a_file_a_writer_holds_open_is_not_called_corrupt(tmp_path):
    """A file held open for writing read as 'HDF5 file truncated or corrupt ... unable to lock file'."""
    from spibatch.io.hdf5 import open_hdf5

    path = detector_with(tmp_path / "busy.h5", lambda f: f.__setitem__("qx", np.zeros(16)))
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'a'); "
                               "print('open', flush=True); time.sleep(60)", str(path)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"})
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(InputError, match="another process holds it open for writing") as caught:
            with open_hdf5(path, "fix"):
                pass
        assert "corrupt" not in str(caught.value)
    finally:
        holder.kill()
        holder.wait()


def checkpoint(tmp_path: Path, **change) -> Path:
    from spibatch.emc.records import write_checkpoint

    out = tmp_path / "emc"
    out.mkdir(parents=True, exist_ok=True)
    path = write_checkpoint(out, 1, np.ones((5, 5, 5)), np.ones(7), {"a": 1}, [{"iteration": 1}])
    with h5py.File(path, "a") as f:
        for key, value in change.items():
            if key == "iteration":
                f.attrs["iteration"] = value
            else:
                del f[key]
                value(f, key)
    return out


def test_a_checkpoint_model_of_the_wrong_size_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A model declared 1001^3 in fill-only gzip chunks (a few kB) was read whole -- 7.9 GB -- before its size
    was compared."""
    from spibatch.emc import records

    out = checkpoint(tmp_path, model=lambda f, k: f.create_dataset(k, (201,) * 3, "f8", chunks=(67,) * 3,
                                                                   compression="gzip"))
    read = records.read_dataset
    monkeypatch.setattr(records, "read_dataset", lambda ds, sel, path: (
        pytest.fail(f"{ds.name} read whole") if ds.size > 10 ** 6 else read(ds, sel, path)))
    with pytest.raises(InputError, match="holds 8120601 values, these settings' model 125"):
        records.read_checkpoint(out, voxels=125)
    with pytest.raises(InputError, match="never written|written whole"):      # without the size to compare
        records.read_checkpoint(out)
    assert records.read_checkpoint(checkpoint(tmp_path / "ok"), voxels=125)["model"].shape == (5, 5, 5)


@pytest.mark.parametrize("change, said", [
    ({"iteration": 10 ** 12}, "its iteration (1000000000000) is not one its history of 1 records holds"),
    ({"iteration": -7}, "its iteration (-7) is not one"),
    ({"scales": lambda f, k: f.create_dataset(k, data=-np.ones(7))}, "scales hold negative values"),
])
def test_a_checkpoint_a_run_could_not_have_written_is_refused(tmp_path, change, said):
    """iteration 10**12: the resume ran no iteration and ended with exit 0; scales of -1: the next iteration's
    log-likelihood was positive, exit 0."""
    from spibatch.emc.records import read_checkpoint

    with pytest.raises(InputError, match=said.replace("(", r"\(").replace(")", r"\)")):
        read_checkpoint(checkpoint(tmp_path, **change), voxels=125)
