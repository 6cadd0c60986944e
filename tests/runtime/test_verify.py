"""`lfmc verify`: a whole artifact checked without loading its code; each kind of damage named."""
from __future__ import annotations

import json
import shutil

import pytest

from lfmc.cli import main
from lfmc.compile import compile_model
from lfmc.runtime import RuntimeLoadError
from lfmc.runtime.verify import verify_artifact


@pytest.fixture(scope="module")
def arts(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("verify")
    m = tiny_models["dense-a"]
    return {"host": compile_model(m, root / "host", max_batch=1, max_context=32),
            "gpu": compile_model(m, root / "gpu", target="nvidia-h200", max_batch=1, max_context=32),
            "arm": compile_model(m, root / "arm", target="apple-m2:cpu", max_batch=1, max_context=32)}


def _rehash(d):
    from lfmc.targets.artifact import sha256_file

    m = json.loads((d / "manifest.json").read_text())
    m["files"] = {f: sha256_file(d / f) for f in m["files"]}
    (d / "manifest.json").write_text(json.dumps(m))


def test_good_artifacts(arts, capsys):
    for k, art in arts.items():
        r = verify_artifact(art)
        assert r["kernels"] > 5 and r["parameters"] > 5, k
    assert verify_artifact(arts["gpu"])["library_kinds"] == ["cuda source + launch table"]
    assert verify_artifact(arts["arm"])["library_kinds"] == ["mach-o"]
    assert main(["verify", str(arts["host"])]) == 0
    assert "no library was loaded" in capsys.readouterr().out


def test_damage_is_named(arts, tmp_path, capsys):
    def fresh(k, name):
        d = tmp_path / name
        shutil.copytree(arts[k], d)
        return d

    d = fresh("host", "plan")
    m = json.loads((d / "manifest.json").read_text())
    m["plan"]["entries"]["decode"][0]["args"][0] = ["slab", "nowhere", 1, 1]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RuntimeLoadError, match="slab 'nowhere' is not declared"):
        verify_artifact(d)
    d = fresh("host", "params")
    m = json.loads((d / "manifest.json").read_text())
    name = next(iter(m["plan"]["params"]))
    m["plan"]["params"][name]["shape"][0] += 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RuntimeLoadError, match=f"parameter '{name}' is"):
        verify_artifact(d)
    d = fresh("gpu", "table")
    lib = json.loads((d / "kernels" / "device.json").read_text())
    k = next(iter(lib["table"]))
    lib["table"][k]["launches"][0]["grid"][0] = "__import__('os').system('true')"
    (d / "kernels" / "device.json").write_text(json.dumps(lib))
    _rehash(d)
    with pytest.raises(RuntimeLoadError, match="only min/max calls"):
        verify_artifact(d)
    d = fresh("arm", "arch")
    m = json.loads((d / "manifest.json").read_text())
    m["target"]["features"]["arch"] = "x86_64"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RuntimeLoadError, match="Mach-O library, the manifest says x86_64"):
        verify_artifact(d)
    d = fresh("host", "lib")
    so = sorted((d / "kernels").iterdir())[0]
    so.write_bytes(b"#!/bin/sh\necho hi\n")
    _rehash(d)
    with pytest.raises(RuntimeLoadError, match="not an object file"):
        verify_artifact(d)
    d = fresh("host", "hash")
    (d / "params.safetensors").write_bytes((d / "params.safetensors").read_bytes()[:-4])
    assert main(["verify", str(d)]) == 2
    assert "was altered" in capsys.readouterr().err
