"""The backend and driver registries: a target family added from outside lfmc (one registration on each side, one
profile) compiles, verifies and runs a model with no edit to the compile flow, the CLI or the runtime; compile
options are validated once and recorded without this machine's paths; a recompile with another --max-context
rebuilds no kernel."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lfmc.compile import compile_model
from lfmc.ir import Interpreter
from lfmc.ir.errors import LfmcError
from lfmc.options import CompileOptions
from lfmc.runtime import Engine
from lfmc.runtime.drivers import cpu as cpu_driver
from lfmc.runtime.drivers import register_driver, unregister_driver
from lfmc.runtime.errors import RuntimeLoadError
from lfmc.runtime.verify import verify_artifact
from lfmc.targets.backend import backend_for, families, register, unregister
from lfmc.targets.host.backend import X86Backend
from tests.helpers import interpreter_greedy

FAMILY, DRIVER = "test-recording-cpu", "test-recorder"


class RecordingDriver(cpu_driver.CpuDriver):
    """The cpu driver, recording every kernel launch."""

    name = DRIVER
    launched: list[str] = []
    load_step_runner = None         # every kernel through function() (no one-call steps), so each is recorded

    def function(self, lib, name):
        f = super().function(lib, name)

        def call(*args):
            RecordingDriver.launched.append(name)
            return f(*args)

        return call


verify_library = cpu_driver.verify_library          # this module is the driver's module: its library check


class RecordingBackend(X86Backend):
    """A second CPU backend: this machine's kernels, run by the recording driver."""

    name = "test-recording"
    families = (FAMILY,)
    driver = DRIVER

    def accepts(self, profile) -> bool:
        return profile.family == FAMILY

    def runs_here(self, profile) -> str:
        return "yes (recorded)"

    def knobs(self, profile):
        from lfmc.targets.host import host_knobs

        return {e: host_knobs(e) for e in ("prefill", "decode")}

    def target_info(self, profile):
        from lfmc.targets.host import cpu_features

        return {"name": profile.name, "family": FAMILY, "backend": self.name, "driver": DRIVER, "kind": "llvm",
                "features": cpu_features()}

    def build(self, kernels, profile, out_dir, progress):
        from lfmc.targets.host import build_host

        return build_host(kernels, out_dir, progress)


@pytest.fixture
def toy(tmp_path):
    register(RecordingBackend())
    register_driver(DRIVER, __name__, "RecordingDriver")
    profiles = tmp_path / "toy.toml"
    profiles.write_text(f'[toy-board]\nfamily = "{FAMILY}"\nmemory_gb = 1\nweight_budget_gb = 1\n')
    yield profiles
    unregister("test-recording")
    unregister_driver(DRIVER)


def test_a_new_target_family_is_one_registration(toy, tiny_models, tmp_path):
    assert FAMILY in families()
    m = tiny_models["dense-a"]
    art = compile_model(m, tmp_path / "art", "toy-board", profiles=toy, max_batch=2, max_context=64,
                        prefill_chunk=16)
    man = json.loads((art / "manifest.json").read_text())
    assert man["target"]["driver"] == DRIVER and man["target"]["backend"] == "test-recording"
    assert verify_artifact(art)["library_kinds"] == ["elf"]
    RecordingDriver.launched.clear()
    eng = Engine(art)
    assert isinstance(eng.driver, RecordingDriver)
    prompt = [5, 9, 200, 3]
    want = interpreter_greedy(Interpreter(m.graph, m.weights), prompt, 8)
    assert eng.generate(prompt, 8, stop=[]).tokens == want
    assert len(RecordingDriver.launched) > 8 and set(RecordingDriver.launched) <= set(man["kernels"])
    # the CLI knows it from the registries alone
    from lfmc.cli import main

    assert main(["targets", "--profiles", str(toy)]) == 0


def test_unregistered_families_and_drivers_are_clear_errors(toy, tiny_models, tmp_path):
    art = compile_model(tiny_models["dense-a"], tmp_path / "art", "toy-board", profiles=toy, max_batch=1,
                        max_context=32, prefill_chunk=8)
    unregister_driver(DRIVER)
    with pytest.raises(RuntimeLoadError, match=f"unknown device driver '{DRIVER}'"):
        Engine(art)
    with pytest.raises(RuntimeLoadError, match="unknown device driver"):
        verify_artifact(art)
    unregister("test-recording")
    from lfmc.targets.profiles import get_profile

    with pytest.raises(LfmcError, match="family must be one of"):
        get_profile("toy-board", toy)


def test_compile_options_are_validated_once():
    with pytest.raises(LfmcError, match="--dtype"):
        CompileOptions(dtype="f8")
    with pytest.raises(LfmcError, match="--kv-dtype"):
        CompileOptions(kv_dtype="i4")
    with pytest.raises(LfmcError, match="activation quantization"):
        CompileOptions(act_quant="i4")
    with pytest.raises(LfmcError, match="at least 1"):
        CompileOptions(max_batch=0)
    with pytest.raises(LfmcError, match="--max-context"):
        CompileOptions(max_context=0)
    with pytest.raises(TypeError, match="unknown compile option.*max_contxt"):
        CompileOptions.from_kwargs(max_contxt=5)
    o = CompileOptions(quant="none", act_quant="none", passes="dce, fuse-norm")
    assert o.quant is None and o.act_quant is None and o.passes == ("dce", "fuse-norm")
    with pytest.raises(Exception):
        o.dtype = "f16"                                   # frozen


def test_manifest_records_options_without_paths(tiny_models, tmp_path):
    m = tiny_models["dense-a"]
    prof = tmp_path / "deep" / "profiles.toml"
    prof.parent.mkdir()
    prof.write_text('[my-host]\nfamily = "opencl"\ndevice = "mali"\nmemory_gb = 8\n')
    art = compile_model(m, tmp_path / "art", "host", max_batch=2, max_context=48, prefill_chunk=8,
                        profiles=prof)
    text = (art / "manifest.json").read_text()
    assert str(tmp_path) not in text
    o = json.loads(text)["options"]
    assert o["max_batch"] == 2 and o["max_context"] == 48 and o["prefill_chunk"] == 8
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", o["profiles"])
    assert o["prune"] is None and o["passes"] == json.loads(text)["passes"]
    o = CompileOptions(prune={"experts_keep": 1, "calibration": {"big": "data"}}).manifest(["dce"])
    assert o["prune"] == {"experts_keep": 1} and o["passes"] == ["dce"]


def test_another_max_context_rebuilds_no_kernel(tiny_models, tmp_path, monkeypatch):
    """The context length is a runtime shape: a second compile with another --max-context takes every kernel
    from the build cache (the kernels' keys carry only what changes their code)."""
    monkeypatch.setenv("LFMC_CACHE", str(tmp_path / "cache"))
    m = tiny_models["moe-a"]
    logs: list[str] = []
    a = compile_model(m, tmp_path / "a", "host", max_batch=2, max_context=64, prefill_chunk=8, log=logs.append)
    b = compile_model(m, tmp_path / "b", "host", max_batch=2, max_context=512, prefill_chunk=8, log=logs.append)
    n = len([f for f in Path(a).glob("kernels/*.so") if f.name != "lfmc_step.so"])   # the step runner: no kernel
    hits = [re.search(r"kernel libraries: (\d+), (\d+) of them from the build cache", s) for s in logs]
    hits = [(int(h[1]), int(h[2])) for h in hits if h]
    assert hits == [(n, 0), (n, n)]
    for f in Path(a).glob("kernels/*.so"):
        assert (Path(b) / "kernels" / f.name).read_bytes() == f.read_bytes()
    la, lb = (json.loads((Path(p) / "manifest.json").read_text())["limits"]["max_context"] for p in (a, b))
    assert (la, lb) == (64, 512)


def test_every_profile_has_a_backend_and_a_driver():
    from lfmc.runtime.drivers import driver_names
    from lfmc.targets.profiles import all_profiles

    for name, p in all_profiles().items():
        be = backend_for(p)
        assert p.family in be.families and be.driver_for(p) in driver_names(runnable=False), name


def test_an_older_schema_is_refused_naming_both_versions(served_artifact, tmp_path):
    import shutil

    from lfmc.plan import SCHEMA_VERSION

    d = tmp_path / "old"
    shutil.copytree(served_artifact, d)
    m = json.loads((d / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION == 4 and m["target"]["family"] == "cpu"
    m["schema_version"] = 3
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RuntimeLoadError, match="artifact schema 3, this runtime reads schema 4"):
        Engine(d)


@pytest.mark.parametrize("target", ["snapdragon-8gen3", "nvidia-h100", "wafer-tiny"])
def test_int8_kv_cache_is_refused_off_the_cpu_by_name(target, tiny_models, tmp_path):
    """--kv-dtype i8 is read by the CPU attention kernels only: a GPU target and the wafer say so and what to use,
    and leave no artifact."""
    with pytest.raises(LfmcError, match=r"--kv-dtype") as e:
        compile_model(tiny_models["dense-a"], tmp_path / "art", target, kv_dtype="i8", max_batch=1, max_context=32,
                      prefill_chunk=8)
    assert "f16" in str(e.value) and not (tmp_path / "art").exists()
