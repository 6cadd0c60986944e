"""The layering rules of ARCHITECTURE.md, checked on the import statements of every module."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

PKG = pathlib.Path(__file__).resolve().parents[1] / "lfmc"
FORBIDDEN = {
    "ir": {"frontend", "passes", "targets", "runtime", "cli", "check", "compile"},
    "frontend": {"passes", "targets", "runtime"},
    "passes": {"targets", "runtime", "frontend"},
    "targets": {"passes", "runtime", "frontend"},
    "runtime": {"frontend", "passes", "targets", "ir", "compile", "check"},
    "plan": {"ir", "frontend", "passes", "targets", "runtime", "compile", "check", "cli", "options"},
    "sysmem": {"ir", "frontend", "passes", "targets", "runtime", "compile", "check", "cli", "options", "plan",
               "paramfile"},
    "paramfile": {"ir", "frontend", "passes", "targets", "runtime", "compile", "check", "cli", "options", "plan"},
    "options": {"frontend", "passes", "targets", "runtime", "compile", "check", "cli"},
    "mixers": {"ir", "frontend", "passes", "targets", "runtime", "compile", "check", "cli", "options", "plan"},
}


def _lfmc_imports(path: pathlib.Path) -> set[str]:
    mod = path.relative_to(PKG.parent).with_suffix("").parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(mod[: len(mod) - node.level])
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")
            if parts and parts[0] == "lfmc" and len(parts) > 1:
                out.add(parts[1])
            elif parts == ["lfmc"]:
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                p = a.name.split(".")
                if p[0] == "lfmc" and len(p) > 1:
                    out.add(p[1])
    return out


def test_layers_import_only_what_they_may():
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        for f in ((PKG / layer).rglob("*.py") if (PKG / layer).is_dir() else [PKG / f"{layer}.py"]):
            hit = _lfmc_imports(f) & forbidden
            if hit:
                bad.append(f"{f.relative_to(PKG)} imports {sorted(hit)}")
    assert not bad, bad


def test_ir_imports_without_torch():
    code = "import sys, lfmc.ir, lfmc.ir.summary; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compiling_a_preset_imports_no_torch(tmp_path):
    """tvm_ffi would import torch with TVM: seconds of import, and TVMScript parsing several times slower with
    torch's modules loaded (lfmc/tvm_env.py). Compiling a preset needs neither torch nor transformers."""
    code = ("import sys; from lfmc.cli import main; "
            f"assert main(['compile', 'lfm2-tiny', '-o', {str(tmp_path / 't.host')!r}, '--quiet']) == 0; "
            "assert 'tvm' in sys.modules and 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    # and torch still imports after TVM, for the frontends that need it
    code = "import sys; from lfmc.tvm_env import import_tvm; import_tvm(); import torch; assert torch.zeros(2).sum() == 0"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_running_an_artifact_loads_no_compiler(tmp_path):
    """A process that only runs an artifact loads TVM's runtime library, not its compiler (libtvm_compiler.so with
    LLVM: about 220 MiB resident, lfmc/tvm_env.py), nor torch; its logits are those of the same engine in a
    process that has TVM's compiler loaded (here, the test's)."""
    import numpy as np

    from lfmc.compile import compile_model
    from lfmc.frontend import import_preset
    from lfmc.runtime import Engine

    art = compile_model(import_preset("lfm2-tiny", weights=True, seed=4), tmp_path / "a", max_batch=1,
                        max_context=32, prefill_chunk=8)
    s = (eng := Engine(art)).new_sequence()
    want = np.concatenate([eng.prefill(s, [5, 9, 2, 11, 40, 3, 8, 1, 7]), eng.decode([s], [3])[0]])
    code = ("import sys, numpy as np; from lfmc.runtime import Engine; "
            f"e = Engine({str(art)!r}); s = e.new_sequence(); "
            "np.save(sys.argv[1], np.concatenate([e.prefill(s, [5, 9, 2, 11, 40, 3, 8, 1, 7]), e.decode([s], [3])[0]])); "
            "assert 'tvm' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)[:0]; "
            "maps = open('/proc/self/maps').read(); assert 'libtvm_runtime' in maps and 'libtvm_compiler' not in maps")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "got.npy")], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), want)


# literals that equal a registered name but mean something else, with the reason
NOT_OUR_NAMES = {("lfmc/frontend/reference.py", "cpu"): "torch.device('cpu'): PyTorch's device, not lfmc's driver"}


def test_no_target_family_or_driver_names_outside_their_homes():
    """The compile flow, the CLI and the runtime ask the registries (lfmc/targets/backend.py,
    lfmc/runtime/drivers/__init__.py); only target and driver code may spell a family or driver name."""
    from lfmc.runtime.drivers import driver_names
    from lfmc.targets.backend import families

    names = set(families()) | set(driver_names(runnable=False))
    assert {"cpu", "opencl", "cuda", "metal", "rocm", "wafer", "hip"} <= names
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG.parent).as_posix()
        if rel.startswith(("lfmc/targets/", "lfmc/runtime/drivers/")):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and node.value in names and (rel, node.value) not in NOT_OUR_NAMES:
                bad.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not bad, bad


LONG_LEFT: dict[str, int] = {}          # none left: a function over 100 lines gets one job per piece


def test_no_function_longer_than_100_lines():
    long = []
    for f in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100 and n > LONG_LEFT.get(node.name, 0):
                    long.append(f"{f.relative_to(PKG.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long, long
