"""A Karabo bridge endpoint is whoever answers on it: a message must never run code here (protocol 1.0's
msgpack-numpy unpickles arrays of Python objects) and a malformed one costs one train, not the follow."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

msgpack = pytest.importorskip("msgpack", reason="the bridge needs msgpack (pip install '.[test]')")
pytest.importorskip("karabo_bridge", reason="karabo-bridge is in the [test] extra")
msgpack_numpy = pytest.importorskip("msgpack_numpy")

from spibatch.stream.bridge import deserialize  # noqa: E402

SOURCE = "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED"


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def message_1_0(array_field) -> list[bytes]:
    return [msgpack.packb({SOURCE: {"image.data": array_field, "metadata": {"timestamp": {"tid": 5}}}},
                          use_bin_type=True)]


def test_a_pickled_object_array_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = {b"nd": True, b"kind": b"O", b"type": "|O", b"shape": [1], b"data": pickle.dumps(Payload(str(marker)))}
    with pytest.raises(ValueError, match="Python objects"):
        deserialize(message_1_0(evil))
    assert not marker.exists() and not os.path.exists(marker)


@pytest.mark.parametrize("evil", [
    {b"nd": True, b"type": "|O", b"shape": (1,), b"data": b"A" * 64},                      # no kind: the guard missed it
    {"nd": True, "kind": "O", "type": "|O", "shape": (1,), "data": b"A" * 64},              # text keys
    {b"nd": True, b"kind": b"V", b"type": [["a", "|O"]], b"shape": (1,), b"data": b"A" * 64}])   # a field of objects
def test_an_object_dtype_by_any_spelling_is_refused_not_built_over_the_senders_bytes(evil):
    """msgpack_numpy built an object array over the message's bytes for each of these: the follower segfaulted
    (rc 139) on the first touch of it."""
    with pytest.raises(ValueError, match="Python objects"):
        deserialize(message_1_0(evil))


def test_an_array_whose_shape_needs_more_bytes_than_it_carries_is_refused():
    with pytest.raises(ValueError, match="needs 4000 bytes, the message holds 16"):
        deserialize(message_1_0({b"nd": True, b"type": "<f4", b"kind": b"", b"shape": (10, 100), b"data": b"x" * 16}))


def test_numeric_arrays_of_both_protocols_decode_as_the_library_does():
    from karabo_bridge.serializer import serialize

    frames = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    data, meta = deserialize(message_1_0(msgpack_numpy.encode(frames)))
    assert np.array_equal(data[SOURCE]["image.data"], frames) and meta[SOURCE]["timestamp"]["tid"] == 5
    data, meta = deserialize(serialize({SOURCE: {"image.data": frames}}, {SOURCE: {"timestamp.tid": 7}}))
    assert np.array_equal(data[SOURCE]["image.data"], frames) and meta[SOURCE]["timestamp.tid"] == 7


def test_a_malformed_message_is_one_skipped_train(monkeypatch):
    from spibatch.stream.blocks import Skipped
    from spibatch.stream.bridge import BridgeSource

    source = BridgeSource("tcp://127.0.0.1:1", (4, 4), timeout_s=0.01)
    try:
        for bad, reason in (([b"\xc1\xc1not msgpack"], "malformed message"),
                            (message_1_0("a string, not frames"), "not numbers")):
            monkeypatch.setattr(source.client, "next", lambda bad=bad: deserialize(bad))
            (item,) = source.read()
            assert isinstance(item, Skipped) and item.reason == reason, item
    finally:
        source.close()
