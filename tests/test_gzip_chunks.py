"""spibatch.io.gzip_chunks: chunks compressed in parallel threads make the very file h5py's own gzip makes."""

import h5py
import numpy as np
import pytest

from spibatch.io.atomic import write_hdf5
from spibatch.io.gzip_chunks import create_gzip_dataset
from spibatch.io.results import read_result, write_result

SHAPES = [((70, 65, 67), np.float32), ((2, 40, 41, 43), np.float64), ((64, 64, 64), np.float32)]


def volume(shape, dtype, seed=0):
    """A volume like an EMC model: zeros outside a ball, noisy positive values inside."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape[-3:]).astype(float)
    centre = (np.array(shape[-3:]) - 1) / 2
    r = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0))
    ball = np.where(r < min(shape[-3:]) / 2.5, np.exp(-r / 5) * 1e3, 0.0)
    return (ball * rng.gamma(2.0, size=shape)).astype(dtype)


@pytest.mark.parametrize("shape,dtype", SHAPES)
@pytest.mark.parametrize("threads", [1, 4])
def test_the_same_bytes_as_h5pys_own_gzip(tmp_path, shape, dtype, threads):
    value = volume(shape, dtype)
    ours, theirs = tmp_path / "ours.h5", tmp_path / "theirs.h5"
    write_hdf5(ours, lambda f: create_gzip_dataset(f, "v", value, 4, threads=threads))
    write_hdf5(theirs, lambda f: f.create_dataset("v", data=value, compression="gzip", compression_opts=4,
                                                  shuffle=True, track_times=False))
    assert ours.read_bytes() == theirs.read_bytes()
    with h5py.File(ours) as f:
        d = f["v"]
        assert (d.compression, d.compression_opts, d.shuffle, d.dtype) == ("gzip", 4, True, dtype)
        assert d.chunks is not None
        assert any(n % c for n, c in zip(shape, d.chunks)) == (shape != (64, 64, 64))   # padded edge chunks
        np.testing.assert_array_equal(d[...], value)
        assert d.id.get_storage_size() < 0.8 * value.nbytes                             # compressed


def test_write_result_compresses_volumes_in_parallel_and_reads_back(tmp_path, monkeypatch):
    from spibatch.io import gzip_chunks

    used = []
    real = gzip_chunks.ThreadPoolExecutor
    monkeypatch.setattr(gzip_chunks, "compression_threads", lambda: 3)
    monkeypatch.setattr(gzip_chunks, "ThreadPoolExecutor", lambda n: used.append(n) or real(n))
    value = volume((130, 129, 128), np.float32, seed=1)   # over GZIP_MIN_VOXELS
    write_result(tmp_path / "r.h5", {"intensity": value, "small": np.ones((4, 4, 4), np.float32)}, {"a": 1})
    datasets, attrs = read_result(tmp_path / "r.h5")
    np.testing.assert_array_equal(datasets["intensity"], value)
    assert used == [3] and attrs["a"] == 1
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["intensity"].compression == "gzip" and f["small"].compression is None
