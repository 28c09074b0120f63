"""Files for the bad-input corpus: one good input of every format we read (small, written here), and
functions that write a broken variant of one of them into a case's folder.

Every builder is ``build(path, base)``: ``base`` holds the good inputs' paths (:class:`Base`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

NUM_PIX = 4096          # the small set's 64 x 64 detector
FRAMES = 5000           # > 4096: the full pass reads a second block; the broken frame is the last
CXI_FRAMES = 300        # > 256 (the ingest block): the broken frame is in the second block
CXI_EDGE = 16
INTENSITY_EDGE = 33

TINY_PDB = "".join(
    f"ATOM  {i + 1:5d}  CA  ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00           C\n"
    for i, (x, y, z) in enumerate([(0, 0, 0), (3.8, 0, 0), (0, 3.8, 0), (0, 0, 3.8), (3.8, 3.8, 0), (3.8, 0, 3.8),
                                   (0, 3.8, 3.8), (3.8, 3.8, 3.8), (7.6, 0, 0), (0, 7.6, 0)])) + "END\n"


@dataclass
class Base:
    """The good inputs every case may name (absolute paths), and the earlier run's folder."""

    folder: Path
    pdb: Path
    photons: Path
    photons_bin: Path
    detector: Path
    intensity: Path
    truth: Path
    cxi: Path
    earlier: Path | None = None

    def fmt(self) -> dict:
        return {k: str(v) for k, v in vars(self).items() if v is not None}


def make_base(folder: Path, small_dataset: Path) -> Base:
    """Write the good inputs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Base(folder, folder / "tiny.pdb", folder / "photons.h5", folder / "photons.emc", folder / "detector.h5",
                folder / "intensity.h5", folder / "truth.h5", folder / "frames.cxi")
    base.pdb.write_text(TINY_PDB)
    shutil.copyfile(small_dataset / "det_sim.h5", base.detector)
    write_photons_h5(base.photons, photon_rows())
    write_photons_bin(base.photons_bin, photon_rows())
    write_volume(base.intensity, "intensity", good_intensity(), voxel_size_per_m=1.6e7)
    write_volume(base.truth, "density", good_density(), density_voxel_size_m=1.0e-9)
    write_cxi(base.cxi, cxi_frames())
    return base


# ---------------------------------------------------------------- photons

def photon_rows(frames: int = FRAMES) -> dict[str, list[np.ndarray]]:
    """Sparse frames: 5 single photons and 1 double per frame, spread over the pixels."""
    k = np.arange(frames)
    ones = [(np.arange(5) * 613 + 7 * i) % NUM_PIX for i in k]
    ones = [np.unique(o).astype(np.int32) for o in ones]
    multi = [np.array([(11 * i + 2001) % NUM_PIX], np.int32) for i in k]
    multi = [m if m[0] not in o else np.array([(m[0] + 1) % NUM_PIX], np.int32) for m, o in zip(multi, ones)]
    count = [np.array([2], np.int32) for _ in k]
    return {"place_ones": ones, "place_multi": multi, "count_multi": count}


def write_photons_h5(path: Path, rows: dict, num_pix=NUM_PIX, num_pix_dtype=np.int32, skip=()) -> None:
    """Dragonfly's HDF5 layout, written as given (no checks: broken rows stay broken)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("num_pix", data=np.array([num_pix], num_pix_dtype))
        for name, values in rows.items():
            if name in skip:
                continue
            out = np.empty(len(values), dtype=h5py.vlen_dtype(np.int32))
            for i, v in enumerate(values):
                out[i] = np.asarray(v, np.int32)
            ds = f.create_dataset(name, shape=(len(values),), dtype=h5py.vlen_dtype(np.int32))
            if len(values):
                ds.write_direct(out)


def declared_photons(frames: int) -> Callable:
    """A photons file of a few kB declaring ``frames`` frames whose rows were never written."""
    def build(path: Path, base: Base) -> None:
        with h5py.File(path, "w") as f:
            f["num_pix"] = np.array([NUM_PIX], np.int32)
            for name in ("place_ones", "place_multi", "count_multi"):
                f.create_dataset(name, (frames,), h5py.vlen_dtype(np.int32), chunks=(1024,))
    return build


def write_photons_bin(path: Path, rows: dict, num_pix=NUM_PIX, kind=0, lengths=None) -> None:
    """Dragonfly's older binary .emc (1024-byte header, row lengths, then the flat arrays)."""
    ones, multi, count = rows["place_ones"], rows["place_multi"], rows["count_multi"]
    header = np.zeros(256, "<i4")
    header[:3] = len(ones), num_pix, kind
    n1 = np.array([len(o) for o in ones], "<i4") if lengths is None else lengths[0]
    nm = np.array([len(m) for m in multi], "<i4") if lengths is None else lengths[1]
    with open(path, "wb") as fh:
        for part in (header, n1, nm, np.concatenate(ones), np.concatenate(multi), np.concatenate(count)):
            fh.write(np.asarray(part, "<i4").tobytes())


def photons_variant(edit: Callable[[dict], None] | None = None, **write) -> Callable:
    """A builder: the good rows, changed by ``edit``, written as HDF5."""
    def build(path: Path, base: Base) -> None:
        rows = photon_rows()
        if edit is not None:
            edit(rows)
        write_photons_h5(path, rows, **write)
    return build


def binary_variant(edit: Callable[[dict], None] | None = None, **write) -> Callable:
    def build(path: Path, base: Base) -> None:
        rows = photon_rows()
        if edit is not None:
            edit(rows)
        write_photons_bin(path, rows, **write)
    return build


def set_row(name: str, index: int, values) -> Callable[[dict], None]:
    def edit(rows: dict) -> None:
        rows[name][index] = np.asarray(values, np.int32)
    return edit


def drop_rows(name: str, count: int) -> Callable[[dict], None]:
    def edit(rows: dict) -> None:
        del rows[name][-count:]
    return edit


def empty_frames(rows: dict) -> None:
    """Every frame without a photon (its rows kept, emptied)."""
    for name in rows:
        rows[name] = [np.zeros(0, np.int32) for _ in rows[name]]


def keep_rows(count: int) -> Callable[[dict], None]:
    """Only the first ``count`` frames."""
    def edit(rows: dict) -> None:
        for name in rows:
            del rows[name][count:]
    return edit


def truncated(source_attr: str, fraction: float = 0.6) -> Callable:
    """A copy of a good base file cut to ``fraction`` of its bytes."""
    def build(path: Path, base: Base) -> None:
        data = Path(getattr(base, source_attr)).read_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
    return build


def corrupted_last_frame(path: Path, base: Base) -> None:
    """The good HDF5 photons file with the bytes of its last frame's place_ones row overwritten on disk (as a
    bad sector would): the file opens and its header is fine; only reading that frame shows it."""
    data = bytearray(base.photons.read_bytes())
    row = photon_rows()["place_ones"][-1].astype("<i4").tobytes()
    at = data.rfind(row)
    assert at > 0, "the last row's bytes are not in the file"
    data[at:at + len(row)] = b"\xff" * len(row)
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- detector

def detector_variant(edit: Callable[[h5py.File], None]) -> Callable:
    """A copy of the good detector file, changed in place by ``edit(f)``."""
    def build(path: Path, base: Base) -> None:
        shutil.copyfile(base.detector, path)
        with h5py.File(path, "r+") as f:
            edit(f)
    return build


def declared_pixels(count: int) -> Callable[[h5py.File], None]:
    """qx declared with ``count`` entries, none written (a file of a few kB that would be GBs when read)."""
    def edit(f: h5py.File) -> None:
        del f["qx"]
        f.create_dataset("qx", (count,), "f8", chunks=(65536,), compression="gzip")
    return edit


def replace_dataset(name: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]
        if value is not None:
            f.create_dataset(name, data=value)
    return edit


def with_value(name: str, index, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        data = f[name][()]
        data[index] = value
        del f[name]
        f.create_dataset(name, data=data)
    return edit


def set_attr(name: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f.attrs[name] = value
    return edit


# ---------------------------------------------------------------- volumes

def good_intensity(edge: int = INTENSITY_EDGE) -> np.ndarray:
    """|F|^2 of a small blob, centred (q = 0 at edge // 2), with a beam-stop hole: phasing accepts it."""
    x = np.arange(edge) - edge // 2
    r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    blob = np.exp(-r2 / 8.0) * (1 + 0.3 * np.cos(x[:, None, None] / 2.0))
    intensity = np.abs(np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(blob)))) ** 2
    intensity[r2 < 2] = 0.0
    return intensity.astype(np.float32)


def good_density(edge: int = 11) -> np.ndarray:
    x = np.arange(edge) - edge // 2
    r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    return np.exp(-r2 / 6.0).astype(np.float32)


def write_volume(path: Path, name: str, volume, **attrs) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=volume)
        for key, value in attrs.items():
            f.attrs[key] = value


def volume_variant(name: str, volume: Callable[[], np.ndarray] | np.ndarray, **attrs) -> Callable:
    def build(path: Path, base: Base) -> None:
        write_volume(path, name, volume() if callable(volume) else volume, **attrs)
    return build


def intensity_with(index, value) -> Callable:
    def build(path: Path, base: Base) -> None:
        volume = good_intensity()
        volume[index] = value
        write_volume(path, "intensity", volume, voxel_size_per_m=1.6e7)
    return build


def external_on_fifo(name: str) -> Callable:
    """A volume dataset whose bytes are HDF5 external storage on a FIFO beside the file (a read would wait
    forever for a writer)."""
    def build(path: Path, base: Base) -> None:
        fifo = path.parent / "fifo"
        os.mkfifo(fifo)
        with h5py.File(path, "w") as f:
            f.create_dataset(name, (11, 11, 11), "f4", external=[(str(fifo), 0, 11 ** 3 * 4)])
    return build


def external_link_to_fifo_storage(name: str) -> Callable:
    """``name`` an external link to a second (regular) HDF5 file whose dataset is external storage on a FIFO:
    a hang two files away."""
    def build(path: Path, base: Base) -> None:
        fifo, inner = path.parent / "fifo2", path.parent / "inner.h5"
        os.mkfifo(fifo)
        with h5py.File(inner, "w") as f:
            f.create_dataset("x", (4, 16, 16), "f4", external=[(str(fifo), 0, 4096)])
        with h5py.File(path, "w") as f:
            f[name] = h5py.ExternalLink(str(inner), "/x")
    return build


def virtual_over_missing(name: str) -> Callable:
    """``name`` a virtual dataset of 10 frames (16 x 16) whose second half comes from a file that is not there
    (HDF5 reads those frames as fill values)."""
    def build(path: Path, base: Base) -> None:
        source = path.parent / "src.h5"
        with h5py.File(source, "w") as f:
            f["d"] = np.random.default_rng(0).poisson(2, (5, 16, 16)).astype("f4")
        layout = h5py.VirtualLayout((10, 16, 16), "f4")
        layout[0:5] = h5py.VirtualSource(source.name, "d", shape=(5, 16, 16))
        layout[5:10] = h5py.VirtualSource("missing.h5", "d", shape=(5, 16, 16))
        with h5py.File(path, "w") as f:
            f.create_virtual_dataset(name, layout, fillvalue=0)
    return build


def declared_volume(name: str, shape: tuple[int, ...]) -> Callable:
    """An HDF5 dataset of a huge declared shape that holds no data (a tiny file: chunks are never written)."""
    def build(path: Path, base: Base) -> None:
        with h5py.File(path, "w") as f:
            f.create_dataset(name, shape=shape, dtype="f4", chunks=(1,) + tuple(min(64, s) for s in shape[1:]),
                             compression="gzip")
    return build


def mrc_extended_header(nsymbt: int) -> Callable:
    """A valid 9^3 MRC file whose header then claims an extended header of ``nsymbt`` bytes."""
    def build(path: Path, base: Base) -> None:
        mrc_variant(np.ones((9, 9, 9)))(path, base)
        data = bytearray(path.read_bytes())
        data[92:96] = np.array([nsymbt], "<i4").tobytes()
        path.write_bytes(bytes(data))
    return build


def mrc_variant(volume: np.ndarray, voxel=(2.0, 2.0, 2.0)) -> Callable:
    def build(path: Path, base: Base) -> None:
        import mrcfile

        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.asarray(volume, np.float32))
            mrc.voxel_size = voxel
    return build


def mrc_complex(volume: np.ndarray) -> Callable:
    """An MRC file of complex values (mode 4): a cast to float drops the imaginary part."""
    def build(path: Path, base: Base) -> None:
        import mrcfile

        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.asarray(volume, np.complex64))
    return build


def soft_link_loop(name: str) -> Callable:
    """An HDF5 file whose ``name`` is a soft link to itself."""
    def build(path: Path, base: Base) -> None:
        with h5py.File(path, "w") as f:
            f[name] = h5py.SoftLink(f"/{name}")
    return build


def raw_bytes(data: bytes) -> Callable:
    def build(path: Path, base: Base) -> None:
        path.write_bytes(data)
    return build


def npy_declaring(shape: tuple[int, ...]) -> Callable:
    """A .npy file whose header declares ``shape`` (float64) but that holds 64 bytes of data."""
    def build(path: Path, base: Base) -> None:
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": shape})
            fh.write(bytes(64))
    return build


def background_filled(value: float) -> Callable:
    """A background of the base detector's size, every value ``value`` (HDF5 'background')."""
    def build(path: Path, base: Base) -> None:
        from spibatch.detector import Detector

        with h5py.File(path, "w") as f:
            f.create_dataset("background", data=np.full(Detector.read(base.detector).num_pix, value))
    return build


def text(content: str) -> Callable:
    def build(path: Path, base: Base) -> None:
        path.write_text(content.format(**base.fmt()))
    return build


def unreadable(content: str) -> Callable:
    def build(path: Path, base: Base) -> None:
        path.write_text(content)
        path.chmod(0)
    return build


def symlink(target: str) -> Callable:
    def build(path: Path, base: Base) -> None:
        os.symlink(target, path)
    return build


def directory(path: Path, base: Base) -> None:
    path.mkdir()


def fifo(path: Path, base: Base) -> None:
    """A named pipe nothing writes to (opening it to read would wait for ever)."""
    os.mkfifo(path)


def photons_string_rows(path: Path, base: Base) -> None:
    """A photons file whose three row datasets hold variable-length strings, not int32 rows."""
    with h5py.File(path, "w") as f:
        f["num_pix"] = np.array([NUM_PIX], np.int32)
        for key in ("place_ones", "place_multi", "count_multi"):
            f.create_dataset(key, data=np.array(["a"] * 20, dtype=object), dtype=h5py.string_dtype())


# ---------------------------------------------------------------- CXI

def cxi_frames(frames: int = CXI_FRAMES, edge: int = CXI_EDGE, adu: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    counts = rng.poisson(0.3, size=(frames, edge, edge))
    return (counts * adu + rng.uniform(-0.2, 0.2, size=counts.shape) * adu).astype(np.float32)


def write_cxi(path: Path, frames: np.ndarray, *, mask=None, geometry=True, distance=0.15, pixel=0.5e-3,
              energy_ev=6000.0, data_path="/entry_1/data_1/data") -> None:
    with h5py.File(path, "w") as f:
        chunked = frames.ndim == 3 and frames.shape[0] >= 16 and frames.dtype.kind == "f"
        f.create_dataset(data_path, data=frames, chunks=(16,) + frames.shape[1:] if chunked else None)
        if mask is not None:
            f.create_dataset("/entry_1/data_1/mask", data=mask)
        if geometry:
            f["/entry_1/instrument_1/detector_1/distance"] = distance
            f["/entry_1/instrument_1/detector_1/x_pixel_size"] = pixel
            f["/entry_1/instrument_1/detector_1/y_pixel_size"] = pixel
            f["/entry_1/instrument_1/source_1/energy"] = energy_ev * 1.602176634e-19


def cxi_variant(frames: Callable[[], np.ndarray] | None = None, **write) -> Callable:
    def build(path: Path, base: Base) -> None:
        write_cxi(path, cxi_frames() if frames is None else frames(), **write)
    return build


def frames_with(index, value) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        data = cxi_frames()
        data[index] = value
        return data
    return make


def declared_cxi(shape: tuple[int, ...]) -> Callable:
    def build(path: Path, base: Base) -> None:
        with h5py.File(path, "w") as f:
            f.create_dataset("/entry_1/data_1/data", shape=shape, dtype="f4", chunks=(1,) + shape[1:2] + (64,),
                             compression="gzip")
    return build


# ---------------------------------------------------------------- YAML

def yaml_text(sections: dict, indent: str = "") -> str:
    """A pipeline or site file from nested dicts, in block style (values written as given; '{name}'
    placeholders are filled with the base inputs' paths)."""
    lines = []
    for key, value in sections.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(yaml_text(value, indent + "  ").rstrip("\n"))
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines) + "\n"


def yaml_file(sections: dict) -> Callable:
    return text(yaml_text(sections))


def background_with(index=None, value=None, size_change: int = 0, dataset: str = "background",
                    suffix_npy: bool = False) -> Callable:
    """A background file for the base detector (0.01 photons per pixel per frame), ``value`` at ``index``,
    ``size_change`` values more (or fewer), in dataset ``dataset`` (or a .npy array)."""
    def build(path: Path, base: Base) -> None:
        from spibatch.detector import Detector

        values = np.full(Detector.read(base.detector).num_pix + size_change, 0.01)
        if index is not None:
            values[index] = value
        if suffix_npy:
            with open(path, "wb") as fh:
                np.save(fh, values)
            return
        with h5py.File(path, "w") as f:
            f.create_dataset(dataset, data=values)
    return build
