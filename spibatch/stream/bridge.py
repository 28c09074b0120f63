"""The live Karabo bridge (ZeroMQ + msgpack, EuXFEL's online stream), read with ``karabo_bridge.Client``.

Each message is one train: ``data, meta = client.next()``, ``data[source][key]`` the detector's
frames and ``meta[source]["timestamp.tid"]`` its train ID.  The calibrated AGIPD/DSSC/LPD pipeline
sends the modules stacked, either as files hold them, ``(pulses, modules, ss, fs)``, or in the
"online" order ``(modules, fs, ss, pulses)``; both are taken (single-module detectors without the
modules axis), anything else goes to the follower as it is, to be refused as the wrong shape.
Pulse IDs come from ``image.pulseId`` (else the frame within the train).

Skipped, with one log line each: a train without our source (the sources it had are named), a
train without the key, a train whose pulse IDs do not match its frames (a train cut short), a
train that reports modules missing (``modulesPresent``), a train of no frames or of frames that are not
numbers, a train whose ID is 0 (EuXFEL's "no train").  A source we do not read is logged once by name and
ignored.  The bridge never says it has ended: the follower's idle time-out ends it.  A REQ client whose
connection drops connects again, so a bridge that restarted is read again.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from spibatch.stream.blocks import Block, Skipped

log = logging.getLogger("spibatch")


DROPS_SAID = 3      # connections dropped before any train came: a bridge that pushes or publishes, said once


class BridgeSource:
    """Follow a Karabo bridge at ``endpoint`` (e.g. ``tcp://host:4545``) for frames of ``frame_shape``.

    source : the detector source name to read; None takes the first source that has ``key`` (logged)
    sock : "REQ" (the bridge's default, REP on the server), "SUB" or "PULL"
    timeout_s : how long one read waits for a train before returning nothing
    """

    def __init__(self, endpoint: str, frame_shape: tuple[int, ...], *, source: str | None = None,
                 key: str = "image.data", sock: str = "REQ", timeout_s: float = 0.5):
        import karabo_bridge.client

        karabo_bridge.client.deserialize = deserialize   # what Client.next decodes with: ours refuses pickles
        self.endpoint, self.frame_shape, self.source, self.key = endpoint, tuple(frame_shape), source, key
        self.sock, self.timeout_s = sock, timeout_s
        self.client = self.monitor = None
        self.drops = self.trains = 0
        self._connect()
        self.name = f"karabo bridge {endpoint}"
        self.streams = True     # it sends as long as the facility runs: a stop does not wait for it to fall silent
        self.ended: str | None = None
        self.unknown: set[str] = set()

    def read(self) -> list:
        try:
            data, meta = self.client.next()
            self._lost_peer()          # a reply came: a drop before it is an old one
            self.trains += 1
            return [self._train(data, meta, time.time())]
        except TimeoutError:
            if self._lost_peer():
                self._connect()
            return []
        except Exception as exc:  # noqa: BLE001 - whatever a message holds, it costs one train, not the follow
            text = " ".join(str(exc).split())[:160] or "it cannot be decoded (not a Karabo bridge message?)"
            return [Skipped("malformed message", self.endpoint, "message", f"{exc.__class__.__name__}: {text}")]

    def close(self) -> None:
        self.client.__exit__(None, None, None)

    def _connect(self) -> None:
        """A (new) client, and for a REQ socket a monitor of its connection: a REQ socket sends its next request
        only after the reply to the last one, which a bridge that restarted never sends (ZeroMQ reconnects, but
        the request stays unanswered), so a lost connection means a new client.  A bridge that only pauses keeps
        the connection and the request (no train is lost)."""
        import zmq
        from karabo_bridge import Client

        if self.client is not None:
            log.info("bridge %s: the connection was lost: connecting again", self.endpoint)
            self.client.__exit__(None, None, None)      # the monitor's socket with its context
            self.drops += 1
            if self.drops == DROPS_SAID and not self.trains:
                log.warning("spibatch: warning: bridge %s dropped the connection %d times before any train came: a "
                            "bridge that pushes or publishes (PUSH / PUB) drops a %s client; set source.bridge_sock "
                            "(PULL for PUSH, SUB for PUB)", self.endpoint, self.drops, self.sock)
        self.client = Client(self.endpoint, sock=self.sock, timeout=self.timeout_s)
        self.monitor = (self.client._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED) if self.sock == "REQ"
                        else None)

    def _lost_peer(self) -> bool:
        """Whether the REQ socket's connection to the bridge dropped since the last look."""
        import zmq

        lost = False
        while self.monitor is not None:
            try:
                self.monitor.recv_multipart(zmq.NOBLOCK)
                lost = True
            except zmq.Again:
                break
        return lost

    # ------------------------------------------------------------------ one train

    def _train_id(self, data: dict, meta: dict) -> int | None:
        """The train's ID, or None (none sent, or 0: EuXFEL's "no train", which taken would make every real
        train look like a jump)."""
        for name in ([self.source] if self.source in meta else []) + list(meta):
            info = meta.get(name) or {}
            if "timestamp.tid" in info:
                return int(info["timestamp.tid"]) or None
        for values in data.values():     # protocol 1.0: the metadata travel inside data
            tid = (values.get("metadata") or {}).get("timestamp", {}).get("tid")
            if tid is not None:
                return int(tid) or None
        return None

    def _train(self, data: dict, meta: dict, received: float):
        tid = self._train_id(data, meta)
        trains = () if tid is None else (tid,)
        if self.source is None:
            having = [name for name, values in data.items() if self.key in values]
            if having:
                self.source = having[0]
                log.info("bridge %s: reading %s %s", self.endpoint, self.source, self.key)
        for name in data:
            if name != self.source and name not in self.unknown:
                self.unknown.add(name)
                log.warning("bridge %s: train %s: source %s is not one we read: ignored", self.endpoint, tid, name)
        if self.source not in data:
            return Skipped("source missing", self.source or self.endpoint, self.key,
                           f"the train has only sources {sorted(data)}", trains)
        values = data[self.source]
        if tid is None:
            return Skipped("no train ID", self.source, "timestamp.tid", "the train carries no train ID (or 0)")
        if self.key not in values:
            return Skipped("key missing", self.source, self.key, f"the train has keys {sorted(values)[:8]}", trains)
        present = values.get("modulesPresent")
        if present is not None and not all(present):
            missing = [i for i, ok in enumerate(present) if not ok]
            return Skipped("module missing", self.source, "modulesPresent", f"modules {missing} missing", trains)
        frames = self._frames(np.asarray(values[self.key]))
        if frames.dtype.kind not in "biuf":
            return Skipped("not numbers", self.source, self.key, f"frames of type {frames.dtype}, not numbers",
                           trains)
        if not len(frames):
            return Skipped("empty train", self.source, self.key, f"no frame (shape {frames.shape})", trains)
        pulses = values.get("image.pulseId")
        pulses = np.arange(len(frames)) if pulses is None else np.asarray(pulses).reshape(-1)
        if len(pulses) != len(frames):
            return Skipped("train cut short", self.source, "image.pulseId",
                           f"{len(pulses)} pulse IDs for {len(frames)} frames", trains)
        return Block(frames, np.full(len(frames), tid), pulses, self.source, received)

    def _frames(self, array: np.ndarray) -> np.ndarray:
        """(pulses, *frame_shape) from the file or online order; else the array with a frames axis added."""
        shape = self.frame_shape
        if array.shape[1:] == shape:
            return array
        if array.shape == shape:
            return array[None]
        online = tuple(reversed(shape[-2:])) if len(shape) == 2 else (shape[0], shape[2], shape[1])
        if array.ndim == len(shape) + 1 and array.shape[:-1] == online:
            axes = (2, 1, 0) if len(shape) == 2 else (3, 0, 2, 1)
            return np.ascontiguousarray(array.transpose(axes))
        return array[None] if array.ndim == len(shape) else array


def deserialize(msg):
    """``karabo_bridge.serializer.deserialize`` without its unsafe paths: protocol 1.0 decodes arrays with
    msgpack_numpy, which unpickles an array of kind ``O`` and builds an array of any dtype the message names over
    its bytes -- an object dtype makes Python objects of the sender's pointers (a crash, or worse).  Arrays are
    decoded here (:func:`decode_array`): a dtype that holds objects is refused (ValueError: the train is skipped),
    as is an array whose shape needs more bytes than it carries.  Protocol 2 (multipart) is the library's: it
    reads arrays with ``np.frombuffer``, which refuses object dtypes."""
    import msgpack
    import zmq
    from karabo_bridge import serializer

    frames = [m if isinstance(m, zmq.Frame) else zmq.Frame(m) for m in msg]
    if len(frames) >= 2:
        return serializer.deserialize(frames)
    data = msgpack.loads(frames[-1].bytes, raw=False, max_bin_len=0x7FFFFFFF, object_hook=decode_array)
    if not isinstance(data, dict):
        raise ValueError(f"a message of {type(data).__name__}, not a mapping of sources")
    return data, {key: (value.get("metadata", {}) if isinstance(value, dict) else {}) for key, value in data.items()}


def decode_array(obj):
    """msgpack_numpy's encoding of an array (``nd``, ``type``, ``kind``, ``shape``, ``data``; keys as bytes or
    text) or a complex number, decoded without trusting it; anything else is returned as it is."""
    if not isinstance(obj, dict):
        return obj
    keys = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "nd" not in keys:
        return complex(str(keys["data"], "ascii") if isinstance(keys["data"], bytes) else keys["data"]) \
            if "complex" in keys and "data" in keys else obj
    data, descr = keys.get("data"), keys.get("type")
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError("an array without its bytes")
    if keys.get("kind") in (b"V", "V") and isinstance(descr, (list, tuple)):
        descr = [tuple(t.decode("latin-1") if isinstance(t, bytes) else t for t in d) for d in descr]
    dtype = np.dtype(descr.decode("latin-1") if isinstance(descr, bytes) else descr)
    if dtype.hasobject or dtype.itemsize == 0:
        raise ValueError(f"an array of dtype {dtype} (Python objects or empty items): refused")
    if keys["nd"] is not True:
        return np.frombuffer(data, dtype=dtype, count=1)[0]
    shape = tuple(int(n) for n in keys.get("shape", ()))
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if min(shape, default=1) < 0 or count * dtype.itemsize > len(data):
        raise ValueError(f"shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, the message holds {len(data)}")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
