"""Dragonfly's older binary sparse ``.emc`` photons file (read only), and the block check shared with the HDF5 reader.

Layout (little-endian int32 throughout)::

    header, 1024 bytes: num_data, num_pix, type (0 = sparse; dense types 1 and 2 are refused), zeros
    ones (num_data,), multi (num_data,)      photons-per-frame row lengths
    place_ones (sum ones,), place_multi (sum multi,), count_multi (sum multi,)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.photons import Photons

EMC_HEADER_BYTES = 1024
FIX_PHOTONS = "give a sparse photons file written by Dragonfly (make_data) or spibatch"


class BinaryPhotons:
    """Frames of Dragonfly's older binary sparse ``.emc`` file (layout in the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        header = np.fromfile(path, "<i4", count=3) if size >= EMC_HEADER_BYTES else np.full(3, -1)
        num_data, num_pix, kind = (int(x) for x in header)
        dense_bytes = {1: 4, 2: 8}.get(kind, 0) * num_data * num_pix
        if dense_bytes > 0 and size == EMC_HEADER_BYTES + dense_bytes:
            raise InputError(f"dense binary .emc (type {kind}) is not supported", path=path, field="header",
                             fix="convert the frames to the sparse layout (e.g. spibatch's CXI ingest)")
        if kind != 0 or num_data < 0 or num_pix < 1 or size < EMC_HEADER_BYTES + 8 * num_data:
            raise InputError("neither an HDF5 file nor a Dragonfly binary .emc file", path=path, fix=FIX_PHOTONS)
        lengths = np.fromfile(path, "<i4", count=2 * num_data, offset=EMC_HEADER_BYTES).astype(np.int64)
        ones, multi = lengths[:num_data], lengths[num_data:]
        if (lengths < 0).any():
            raise InputError("negative per-frame counts in the header block", path=path,
                             field="ones" if (ones < 0).any() else "multi", fix="the file is corrupt; recreate it")
        self.ones_ptr = np.concatenate([[0], np.cumsum(ones)])
        self.multi_ptr = np.concatenate([[0], np.cumsum(multi)])
        self.base = EMC_HEADER_BYTES + 8 * num_data
        n1, nm = int(self.ones_ptr[-1]), int(self.multi_ptr[-1])
        expected = self.base + 4 * (n1 + 2 * nm)
        if size != expected:
            raise InputError(f"{size} bytes, but its header and row lengths need {expected}: truncated, or "
                             "not a Dragonfly .emc file", path=path, fix=FIX_PHOTONS)
        self.offsets = {"place_ones": self.base, "place_multi": self.base + 4 * n1,
                        "count_multi": self.base + 4 * (n1 + nm)}
        self.num_frames, self.num_pix = num_data, num_pix

    def _read(self, name: str, a: int, b: int) -> np.ndarray:
        return np.fromfile(self.path, "<i4", count=int(b - a), offset=self.offsets[name] + 4 * int(a))

    def block(self, start: int, stop: int) -> Photons:
        o, m = self.ones_ptr[start:stop + 1], self.multi_ptr[start:stop + 1]
        return checked_photons(self.path, self.num_pix, start, o - o[0], self._read("place_ones", o[0], o[-1]),
                      m - m[0], self._read("place_multi", m[0], m[-1]), self._read("count_multi", m[0], m[-1]))


def frame_of(indptr: np.ndarray, i: int) -> int:
    return int(np.searchsorted(indptr, i, side="right")) - 1


def checked_photons(path: Path, num_pix: int, first: int, ones_indptr: np.ndarray, ones: np.ndarray,
           multi_indptr: np.ndarray, place_multi: np.ndarray, count_multi: np.ndarray) -> Photons:
    """Validate one block of frames (``first`` is its first frame number) and wrap it as Photons."""
    for name, index, indptr in (("place_ones", ones, ones_indptr), ("place_multi", place_multi, multi_indptr)):
        bad = (index < 0) | (index >= num_pix)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"frame {first + frame_of(indptr, i)}: pixel index {int(index[i])} outside "
                             f"[0, {num_pix})", path=path, field=name,
                             fix="pixel indices must be below num_pix; check that the file was not damaged")
    for problem, bad in (("negative photon count", count_multi < 0), ("photon count below 2", count_multi < 2),
                         ("photon count of 2^24 or more (EMC counts in float32)", count_multi >= 2 ** 24)):
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"frame {first + frame_of(multi_indptr, i)}: {problem} ({int(count_multi[i])})",
                             path=path, field="count_multi",
                             fix="counts must be 2 to 16,777,215 (single photons belong in place_ones); recreate "
                             "the file")
    return Photons(int(num_pix), np.asarray(ones_indptr, np.int64), ones.astype(np.int32, copy=False),
                   np.asarray(multi_indptr, np.int64), place_multi.astype(np.int32, copy=False),
                   count_multi.astype(np.int32, copy=False))
