"""params.safetensors: the aligned writer, the reader mapped and unmapped, the engine on a mapped file."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from lfmc.runtime import Engine
from lfmc.paramfile import ALIGN, PAD_PREFIX, write_params
from lfmc.runtime.params import param_header, read_params

TENSORS = {"b": np.arange(6, dtype=np.float16).reshape(2, 3), "a": np.arange(5, dtype=np.int8),
           "c": np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2), "u": np.arange(7, dtype=np.uint16),
           "i": np.arange(3, dtype=np.int32)}
SPEC = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in TENSORS.items()}


def _offsets(path) -> dict[str, int]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return {k: 8 + n + v["data_offsets"][0] for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}


def test_every_tensor_is_aligned_and_the_package_reads_the_file(tmp_path):
    """Each tensor starts at a 64-byte aligned file offset; the fillers keep the file valid safetensors (no
    holes), so the safetensors package reads the same tensors."""
    f = tmp_path / "p.safetensors"
    write_params(f, TENSORS)
    offs = _offsets(f)
    assert {k for k in offs if not k.startswith(PAD_PREFIX)} == set(TENSORS)
    assert all(offs[k] % ALIGN == 0 for k in TENSORS), offs
    assert any(k.startswith(PAD_PREFIX) for k in offs)            # these shapes need fillers
    st = pytest.importorskip("safetensors.numpy")
    got = st.load_file(str(f))
    for k, v in TENSORS.items():
        np.testing.assert_array_equal(got[k], v)
    # the same tensors give the same bytes (regenerated params are checked against the manifest's hash)
    g = tmp_path / "q.safetensors"
    write_params(g, dict(reversed(list(TENSORS.items()))))
    assert f.read_bytes() == g.read_bytes()
    assert set(param_header(f, SPEC)) == set(TENSORS)           # the fillers are not parameters
    with pytest.raises(ValueError, match="reserved prefix"):
        write_params(g, {PAD_PREFIX + "x": TENSORS["a"]})


@pytest.mark.parametrize("mapped", [False, True])
def test_reader_mapped_and_read(tmp_path, mapped):
    f = tmp_path / "p.safetensors"
    write_params(f, TENSORS)
    allocs = []

    def alloc(shape, dt):
        allocs.append(shape)
        return np.empty(shape, dt)

    got = read_params(f, SPEC, alloc, mapped=mapped)
    for k, v in TENSORS.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].ctypes.data % ALIGN == 0 or not mapped
    assert len(allocs) == (0 if mapped else len(TENSORS))
    if mapped:                                     # views of a private mapping: writable, and the file unchanged
        before = f.read_bytes()
        got["c"][:] = 7
        assert f.read_bytes() == before


def test_unaligned_file_is_read_not_mapped(tmp_path):
    """A file from another writer (the safetensors package packs tensors unaligned) still loads: tensors that
    are not 64-byte aligned are read into buffers."""
    st = pytest.importorskip("safetensors.numpy")
    f = tmp_path / "p.safetensors"
    st.save_file(TENSORS, str(f))
    assert any(o % ALIGN for k, o in _offsets(f).items())
    got = read_params(f, SPEC, lambda s, d: np.empty(s, d), mapped=True)
    for k, v in TENSORS.items():
        np.testing.assert_array_equal(got[k], v)


def test_engine_maps_its_weights(served_artifact):
    """The cpu driver's engine runs on a mapping of params.safetensors (no private copy of the weights) with the
    same logits as an engine that reads them."""
    prompt = list(b"mapped weights")
    a = Engine(served_artifact, max_batch=1)
    b = Engine(served_artifact, max_batch=1, map_params=False)
    maps = open("/proc/self/maps").read()
    assert str(served_artifact / "params.safetensors") in maps
    import mmap

    def mapped(v) -> bool:
        while isinstance(v, np.ndarray):
            v = v.base
        return isinstance(v, memoryview) and isinstance(v.obj, mmap.mmap)

    assert all(mapped(v) for v in a.params.values())
    assert not any(mapped(v) for v in b.params.values())
    for eng in (a, b):
        seq = eng.new_sequence()
        first = eng.prefill(seq, prompt)
        eng.logs = [first] + [eng.decode([seq], [int(np.argmax(first))])[0]]
    for x, y in zip(a.logs, b.logs):
        np.testing.assert_array_equal(x, y)
