"""The three ways :func:`spibatch.stream.replay.replay` plays a FrameSet: EuXFEL sequence files, a Karabo
bridge server, CXI files.  Every file is written under a hidden name and renamed into place when
complete, so a follower never sees half a file."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("spibatch")

# detector -> (Karabo device ID of module {m} of corrected data, the module files' name tag)
DEVICES = {"AGIPD1M": ("SPB_DET_AGIPD1M-1/CORR/{m}CH0", "AGIPD"), "DSSC1M": ("SCS_DET_DSSC1M-1/CORR/{m}CH0", "DSSC"),
           "LPD1M": ("FXE_DET_LPD1M-1/CORR/{m}CH0", "LPD")}
BRIDGE_SOURCE = "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED"   # the name the calibration pipeline streams under
HIDDEN = ".replay"


def load(kind: str) -> None:
    """Import what ``kind`` needs (extra-data or karabo-bridge) in the calling thread."""
    if kind == "karabo-bridge":
        import karabo_bridge  # noqa: F401
    elif kind == "euxfel-run":
        import extra_data.tests.mockdata  # noqa: F401

        from spibatch.stream.euxfel import load_extra_data

        load_extra_data()


def _module_class(module_shape: tuple[int, ...]):
    """EXtra-data's mock detector module with our module shape (its corrected data drop the first dim)."""
    from extra_data.tests.mockdata.detectors import AGIPDModule, DetectorModule

    if tuple(module_shape) == AGIPDModule.image_dims[1:]:
        return AGIPDModule
    return type("ReplayModule", (DetectorModule,), {"image_dims": (1,) + tuple(module_shape), "detector_data_size": 416})


def write_sequence(frames, trains: range, folder: Path, sequence: int, *, run_number: int = 1,
                   detector: str = "AGIPD1M") -> list[Path]:
    """One sequence (``trains`` of ``frames``) of a corrected run: a file per module, made by EXtra-data's
    example writer (``write_file``, format 1.0) and filled with the frames and pulse IDs; renamed into
    ``folder`` as ``CORR-R{run}-{tag}{module}-S{sequence}.h5``."""
    import h5py
    from extra_data.tests.mockdata import write_file

    device, tag = DEVICES[detector]
    shape = frames.frame_shape
    modules, module_shape = (shape[0], shape[1:]) if len(shape) == 3 else (1, shape)
    pulses = frames.pulses_per_train
    data = np.stack([frames.train(k)[1] for k in trains]).reshape((len(trains) * pulses, modules) + module_shape)
    hidden = folder / HIDDEN
    hidden.mkdir(exist_ok=True)
    module_cls = _module_class(module_shape)
    paths = []
    for m in range(modules):
        name = f"CORR-R{run_number:04d}-{tag}{m:02d}-S{sequence:05d}.h5"
        tmp = hidden / name
        source = device.format(m=m)
        write_file(os.fspath(tmp), [module_cls(source, frames_per_train=pulses, raw=False, channel_name="output")],
                   ntrains=len(trains), firsttrain=frames.first_train + trains.start, chunksize=len(trains),
                   format_version="1.0")
        with h5py.File(tmp, "r+") as f:
            group = f[f"INSTRUMENT/{source}:output/image"]
            group["data"][...] = data[:, m]
            group["pulseId"][...] = np.tile(np.arange(pulses, dtype=np.uint64), len(trains))
        os.replace(tmp, folder / name)
        paths.append(folder / name)
    return paths


def close_run(folder: Path) -> Path:
    """Write the run's virtual overview file with EXtra-data's own writer: the mark of a closed run."""
    from extra_data import RunDirectory, voview

    path = voview.find_file_write(os.fspath(folder))
    voview.write_atomic(path, RunDirectory(os.fspath(folder), _use_voview=False, parallelize=False))
    return Path(path)


def write_cxi(frames, trains: range, folder: Path, number: int, **_) -> Path:
    """``trains`` of ``frames`` as one CXI file ``frames_{number:05d}.cxi`` with train and pulse IDs per frame."""
    import h5py

    from spibatch.io.atomic import atomic_path

    parts = [frames.train(k) for k in trains]
    data = np.concatenate([p[1] for p in parts])
    train_ids = np.concatenate([np.full(len(p[1]), p[0], np.uint64) for p in parts])
    pulse_ids = np.concatenate([p[2] for p in parts])
    path = folder / f"frames_{number:05d}.cxi"
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("cxi_version", data=[150])
        f.create_dataset("entry_1/data_1/data", data=data, chunks=(1,) + data.shape[1:])
        f.create_dataset("entry_1/trainId", data=train_ids)
        f.create_dataset("entry_1/pulseId", data=pulse_ids)
    return path


def serve_bridge(frames, trains: range, endpoint: str, wait_until, linger_s: float, stop) -> int:
    """Serve each train as one Karabo bridge message (file order: (pulses, *frame_shape)) from a
    ``karabo_bridge.ServerInThread`` (REP, queue of 2), then wait up to ``linger_s`` for the client to take what
    is left.  Returns the trains *sent* (a train the serving thread had taken off the queue still waited for a
    request when the server stopped, and was counted as played; a warning says how many were never taken)."""
    from karabo_bridge import ServerInThread

    import zmq

    from spibatch.errors import InputError

    class Counting(ServerInThread):
        """The library's server, counting the trains it sent and marking each queued one done once handled."""
        sent = 0

        def _run(self):
            while True:
                item = self.buffer.get()
                try:
                    done = self.send(*item)
                finally:
                    self.buffer.task_done()
                if done:
                    break
                self.sent += 1

    fed = 0
    try:
        server = Counting(endpoint, sock="REP", maxlen=2)     # binds here
    except zmq.error.ZMQError as exc:
        raise InputError(f"cannot serve a Karabo bridge at {endpoint!r}: {exc}", field="--target",
                         fix="give a free endpoint such as tcp://127.0.0.1:4545") from None
    server.start()
    try:
        for k in trains:
            if not wait_until(k):
                break
            tid, data, pulse_ids = frames.train(k)
            values = {"image.data": data, "image.pulseId": pulse_ids,
                      "image.trainId": np.full(len(pulse_ids), tid, np.uint64)}
            meta = {BRIDGE_SOURCE: {"source": BRIDGE_SOURCE, "timestamp": time.time(), "timestamp.tid": tid}}
            while not stop.is_set():
                try:
                    server.feed({BRIDGE_SOURCE: values}, meta, timeout=0.2)
                    fed += 1
                    break
                except Exception:   # queue.Full: the client is slower than the rate; keep trying
                    continue
        deadline = time.monotonic() + linger_s
        while server.buffer.unfinished_tasks and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.05)        # the last trains: queued, or taken by the thread and waiting for a request
    finally:
        server.stop()
    if server.sent < fed:
        log.warning("replay: %d of the %d trains served were never taken by a client within %.0f s of the last",
                    fed - server.sent, fed, linger_s)
    return server.sent
