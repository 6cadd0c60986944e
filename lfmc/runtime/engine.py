"""The Engine: loads a compiled artifact and runs its kernel plan through a device driver.

Sequences live in slots (``max_batch`` of them) that own their conv state and a KV cache of ``max_context``
positions. ``prefill`` runs one sequence's prompt in chunks; ``decode`` advances several sequences by one token
in one batched call; ``generate`` / ``stream`` sample on top. Nothing is allocated per decode step: buffers are
sized once at load and every kernel argument of a decode batch size is built once and reused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..plan import STEP_RUNNER, Arg, launches, ring_slots
from ..sysmem import available_memory, physical_memory
from .artifact import check_device, load_manifest
from .drivers import driver_hook, get_driver
from .drafting import Drafter, SpecControl, new_drafter, ngram_draft
from .errors import EngineError, RuntimeLoadError
from .params import read_params
from .sampling import accept_drafts, probs, sample
from .tokenizer import load_tokenizer


@dataclass
class _History:
    """What :meth:`Engine.rollback` needs of a tracked sequence: checkpoints (length, its fixed-size states: conv
    windows, recurrences) after each call, and the tokens fed since the oldest one."""
    depth: int
    base: int                                                     # the length where ``tokens`` starts
    checkpoints: list[tuple[int, dict[str, np.ndarray]]]
    tokens: list[int] = field(default_factory=list)


@dataclass
class _Seq:
    slot: int
    length: int = 0                 # tokens in the state (``pending`` not included)
    history: _History | None = None
    pending: list[int] = field(default_factory=list)    # rolled back to a checkpoint: fed again with the next call


@dataclass(frozen=True)
class Snapshot:
    """A sequence's state at a token position, copied to host memory by :meth:`Engine.snapshot`: every state
    tensor's slot (a KV cache, or any context-long tensor, only up to the position). :meth:`Engine.restore` puts it
    into any free slot of an engine of the same artifact, however long ago it was taken."""

    length: int
    arrays: dict[str, np.ndarray]
    start: int = 0          # context-long tensors hold rows [start, length) (a partial snapshot: a prefix cache's)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())


@dataclass
class GenerationResult:
    tokens: list[int]
    text: str | None
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    stop_reason: str
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def decode_tokens_per_s(self) -> float:
        return (len(self.tokens) - 1) / self.decode_s if self.decode_s > 0 and len(self.tokens) > 1 else 0.0


class Engine:
    """A loaded artifact. ``Engine(path)`` imports neither torch, transformers nor lfmc's compiler."""

    def __init__(self, path: str | Path, device: str | None = None, max_batch: int | None = None,
                 max_context: int | None = None, prefill_chunk: int | None = None, num_threads: int | None = None,
                 verify: bool = True, use_graphs: bool = True, memory_budget: int | None = None,
                 one_call: bool = True, map_params: bool = True):
        """``device``: the driver (``cpu``, ``opencl``, ``cuda``); default: the one the artifact was built for.
        ``use_graphs``: capture decode steps as device graphs where the driver can (CUDA). ``memory_budget``:
        bytes the caches and activations may take (default: the machine's physical memory), checked before
        anything is allocated. ``one_call``: run each step as one native call where the artifact has a step runner
        (the cpu driver); False calls the kernels one by one (what profiling times). ``map_params``: where the
        driver runs on host memory (cpu, wafer), map params.safetensors instead of reading it (the weights are then
        page-cache pages shared between processes); False reads them into private memory."""
        self.root = Path(path)
        self.map_params = map_params
        self.one_call = one_call
        self.memory_budget = memory_budget
        self.use_graphs = use_graphs
        m = load_manifest(self.root, verify_hashes=verify)
        try:
            self._load(m, device, max_batch, max_context, prefill_chunk, num_threads)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
            # load_manifest checked the structure the runtime relies on; anything that still does not fit is
            # a forged or foreign manifest, reported as such rather than as a crash
            raise RuntimeLoadError(f"{self.root / 'manifest.json'}: the artifact does not fit this runtime "
                                   f"({type(e).__name__}: {e})") from None

    def _load(self, m: dict, device: str | None, max_batch: int | None, max_context: int | None,
              prefill_chunk: int | None, num_threads: int | None) -> None:
        device = device or str(m["target"].get("driver"))          # check_device refuses a missing one
        check_device(m, device)
        self.manifest, self.plan = m, m["plan"]
        lim = m["limits"]
        self.max_batch = int(max_batch or lim["max_batch"])
        self.max_context = int(max_context or lim["max_context"])
        self.prefill_chunk = int(prefill_chunk or lim["prefill_chunk"])
        if min(self.max_batch, self.max_context, self.prefill_chunk) < 1:
            raise EngineError("max_batch, max_context and prefill_chunk must be at least 1")
        self.vocab_size = int(self.plan["vocab_size"])
        self.eos_token_id = m["model"].get("eos_token_id")
        self.tokenizer = load_tokenizer(self.root, m.get("tokenizer", {}))
        self.chat: dict[str, str] | None = (m.get("tokenizer") or {}).get("chat")   # checkpoint chat template
        self.driver = get_driver(device, num_threads=num_threads)
        self._row_variants: dict[str, dict] = self.plan.get("row_variants", {})
        # the state tensors a sequence owns, and the fixed-size ones a rollback checkpoint keeps (read once here:
        # a tracked sequence checkpoints them after every call)
        self._held = [(k, len(v["shape"]) > 1 and v["shape"][1] == "C") for k, v in self.plan["state"].items()
                      if v["kind"] != "scratch"]
        self._small_keys = [k for k, grows in self._held if not grows and "window" not in self.plan["state"][k]]
        self._load_params()
        self._allocate()
        self.launches = {e: launches(self.plan, e) for e in self.plan["entries"]}
        names = {L.kernel for e in self.launches.values() for L in e}
        names |= {k for v in self.plan.get("variants", {}).values() for k in v.values()}
        names |= {k for v in self._row_variants.values() for k in v["kernels"].values()}
        names |= {p["kernel"] for p in self.plan.get("peaks", {}).values()}
        names |= {self.plan["read_peak"]["kernel"]} if "read_peak" in self.plan else set()
        # the ISA variant of each kernel that has several (the driver picks by this CPU's features)
        pick = driver_hook(device, "pick_kernels")
        self._impl: dict[str, str] = {k: v for k, v in (pick(m) if pick else {}).items() if k in names}
        run = {k: self._impl.get(k, k) for k in sorted(names)}
        missing = sorted(set(run.values()) - set(m["kernels"]))
        if missing:
            raise RuntimeLoadError(f"{self.root}: the plan uses kernels without a library: {missing[:5]}")
        self._libs = {f: self.driver.load_library(self.root / f)
                      for f in sorted({m["kernels"][i] for i in run.values()})}
        self._funcs = {k: self.driver.function(self._libs[m["kernels"][i]], i) for k, i in run.items()}
        runner = m["kernels"].get(STEP_RUNNER)
        load_runner = getattr(self.driver, "load_step_runner", None)
        self._runner = load_runner(self.root / runner) if runner and load_runner and self.one_call else None
        self._steps: dict[tuple, Any] = {}
        self._logit_args: dict[str, Arg] = {}
        self._calls: dict[tuple, list] = {}
        self._spec: dict[tuple, SpecControl] = {}       # draft-length control per drafter, kept across generations
        self._views: dict[tuple, Any] = {}
        self._seqs: dict[int, _Seq] = {}
        self._next_id = 0
        self._grid: tuple[int, int] = (0, 0)
        self._processor = None

    # ------------------------------------------------------------------------------------------- loading
    def _load_params(self) -> None:
        self.params = read_params(self.root / "params.safetensors", self.plan["params"], self.driver.alloc_host,
                                  mapped=self.map_params and getattr(self.driver, "maps_params", False))
        self.params = {k: self.driver.to_device(v) for k, v in self.params.items()}

    def _variant(self, entry: str, n: int) -> dict | None:
        """The plan's row variants (``plan.row_variants``) an ``entry`` call of ``n`` rows takes, or None: a decode
        step of several sequences takes the taller batched tiles, and so does a prefill of up to ``max_rows``
        rows (a verify of drafts)."""
        rv = self._row_variants.get(entry)
        if rv is None or n < 1:
            return None
        return rv if (n > 1 if entry == "decode" else n <= rv.get("max_rows", 0)) else None

    def _tile(self, entry: str, n: int) -> int:
        """The row tile of an ``entry`` call of ``n`` rows (its row variants' where it takes them)."""
        rv = self._variant(entry, n)
        return rv["rows"] if rv is not None else self.plan["row_tile"][entry]

    def _rows(self, spec: str | int, n: int, entry: str) -> int:
        if isinstance(spec, int):
            return spec
        R = self._tile(entry, n)
        if spec in ("m", "mp"):                 # a vision entry's merged image tokens
            m = n // self.plan["vision"]["merge"]
            return m if spec == "m" else -(-m // R) * R
        return {"n": n, "np": -(-n // R) * R, "nk": n * self.plan["topk"]}[spec]

    def _allocate(self) -> None:
        self._max_rows = max(self.prefill_chunk, self.max_batch)
        text = [e for e in self.plan["entries"] if e != "vision"]
        # the most rows a call pads to: the longest call of each entry, and the longest that takes row variants
        longest = [(e, m) for e in text for m in (self._max_rows, min(self._max_rows, max(
            self._row_variants.get(e, {}).get("max_rows", 1), self.max_batch if e == "decode" else 1)))]
        big = max(self._rows("np", m, e) for e, m in longest)
        self.max_patches = int(self.plan["vision"]["max_patches"]) if "vision" in self.plan else 0

        def rows(r: str | int, entry: str | None) -> int:       # a use's most rows
            if entry == "vision":
                return self._rows(r, self.max_patches, "vision")
            return r if isinstance(r, int) else {"n": self._max_rows, "np": big,
                                                 "nk": self._max_rows * self.plan["topk"]}[r]

        self.slabs = {}
        slab_elems = {name: max(rows(r, s.get("entry")) * c for r, c in s["uses"])
                      for name, s in self.plan["slabs"].items()}
        shapes = {k: self._state_shape(s) for k, s in self.plan["state"].items()}
        # the budget is checked before anything is allocated: a huge max_context or a forged plan is an error,
        # not an out-of-memory kill
        nbytes = lambda n, dt: int(n) * np.dtype(dt).itemsize  # noqa: E731
        need = (sum(nbytes(e, self.plan["slabs"][k]["dtype"]) for k, e in slab_elems.items())
                + sum(nbytes(np.prod(sh, dtype=np.int64), self.plan["state"][k]["dtype"]) for k, sh in shapes.items()))
        budget = self.memory_budget if self.memory_budget is not None else physical_memory()
        if budget and need > budget:
            raise EngineError(f"{self.root}: caches and activations for max_batch {self.max_batch} x max_context "
                              f"{self.max_context} need {need / 2**30:.2f} GiB, over the memory budget "
                              f"{budget / 2**30:.2f} GiB: lower max_context or max_batch")
        if any(e < 0 for e in slab_elems.values()) or any(d < 0 for sh in shapes.values() for d in sh):
            raise RuntimeLoadError(f"{self.root}: the plan declares a buffer of negative size")
        for name, elems in slab_elems.items():
            self.slabs[name] = self.driver.alloc((elems,), self.plan["slabs"][name]["dtype"])
        self.state = {k: self.driver.alloc(shapes[k], s["dtype"]) for k, s in self.plan["state"].items()}
        rows_in = max(big, self._rows("np", self.max_patches, "vision") if self.max_patches else 0)
        self.inputs = {k: self.driver.alloc((rows_in,), "int32") for k in ("tokens", "slots", "pos")}
        if self.max_patches:
            self.inputs["order"] = self.driver.alloc((rows_in,), "int32")

    def _state_shape(self, spec: dict) -> tuple[int, ...]:
        """A state buffer's shape with its dimensions bound: S slots, C the max context, R a sliding window's
        ring (:func:`lfmc.plan.ring_slots`)."""
        dims = {"S": self.max_batch, "C": self.max_context}
        if "window" in spec:
            dims["R"] = ring_slots(spec["window"], self.prefill_chunk, self.max_context)
        return tuple(int(dims.get(d, d)) for d in spec["shape"])

    def memory_bytes(self) -> dict[str, int]:
        nb = lambda d: sum(int(a.nbytes) for a in d.values())  # noqa: E731
        return {"params": nb(self.params), "state": nb(self.state), "activations": nb(self.slabs) + nb(self.inputs)}

    # ------------------------------------------------------------------------------------------ executor
    def _view(self, buf_key: tuple, buf: Any, shape: tuple[int, ...]) -> Any:
        key = buf_key + shape
        v = self._views.get(key)
        if v is None:
            v = self._views[key] = self.driver.device_view(buf, shape)
        return v

    def _arg(self, a: Arg, n: int, entry: str, slot: int) -> Any:
        kind, name = a.kind, a.name
        if kind == "slab":
            return self._view(("slab", name), self.slabs[name], (self._rows(a.rows, n, entry), a.cols))
        if kind == "param":
            return self._view(("param", name), self.params[name], tuple(self.params[name].shape))
        if kind == "state":
            return self._view(("state", name), self.state[name], tuple(self.state[name].shape))
        if kind == "input":
            return self._view(("input", name), self.inputs[name], (self._rows(a.rows, n, entry),))
        if kind == "scalar":
            if name == "nb":
                return self._rows("np", n, entry) // self._tile(entry, n)
            if name == "slot":
                return slot
            if name == "mb":
                return self._rows("mp", n, entry) // self._tile(entry, n)
            if name in ("gh", "gw"):
                return self._grid[0 if name == "gh" else 1]
        if kind == "const":
            return name
        raise RuntimeLoadError(f"plan argument {a.to_json()!r} is not understood by this runtime")

    def _launches(self, entry: str, n: int) -> list[tuple[str, tuple[Arg, ...]]]:
        """(kernel, args) of each launch of ``entry`` for ``n`` rows: a tuned variant replaces a matmul where the
        plan has one for the launch's row-block count (it takes no ``nb``: its shape is fixed)."""
        variants = self.plan.get("variants", {})
        rv = self._variant(entry, n)
        taller = rv["kernels"] if rv is not None else {}
        out = []
        for L in self.launches[entry]:
            k, args = taller.get(L.kernel, L.kernel), L.args
            v = variants.get(k)
            if v and args and args[-1].kind in ("scalar", "const"):
                nb = self._arg(args[-1], n, entry, 0)
                if str(nb) in v:
                    k, args = v[str(nb)], args[:-1]
            out.append((k, args))
        return out

    def _run(self, entry: str, n: int, slot: int = 0) -> None:
        key = (entry, n, slot) + (self._grid if entry == "vision" else ())   # a vision call's scalars: its grid
        calls = self._calls.get(key)
        if calls is None:
            calls = [(self._funcs[k], [self._arg(a, n, entry, slot) for a in args])
                     for k, args in self._launches(entry, n)]
            self._calls[key] = calls
        if self._runner is not None:               # the whole step in one native call
            step = self._steps.get(key)
            if step is None:
                step = self._steps[key] = self._runner.prepare(
                    [(self.root / self.manifest["kernels"][i], i, args)
                     for i, (_, args) in zip((self._impl.get(k, k) for k, _ in self._launches(entry, n)), calls)])
            step()
            return
        run_graph = getattr(self.driver, "run_graph", None)
        if run_graph is not None and entry == "decode" and self.use_graphs:
            run_graph(key, lambda: [f(*args) for f, args in calls])   # one launch per decode step (CUDA graphs)
        else:
            for f, args in calls:
                f(*args)
        self.driver.sync()

    def profile(self, entry: str, n: int, reps: int = 3) -> dict[str, float]:
        """Seconds per kernel (summed over its launches, median of ``reps``) for one ``entry`` call of ``n`` rows,
        on scratch slot 0 state. For finding where time goes; it overwrites slot 0's state."""
        if not 1 <= n <= (self.prefill_chunk if entry == "prefill" else self.max_batch):
            raise EngineError(f"profile rows {n} out of range for {entry}")
        self.driver.write(self.inputs["tokens"], np.zeros(n, np.int32))
        self.driver.write(self.inputs["slots"], np.zeros(n, np.int32))
        self.driver.write(self.inputs["pos"], np.arange(n, dtype=np.int32))
        self._run(entry, n)
        return self._time_calls(entry, n, (entry, n, 0), reps)

    def measure_peaks(self, seconds: float = 0.05, reps: int = 3) -> dict[str, float]:
        """GOP/s of the arithmetic peak of each instruction family the artifact's matmuls compute in (the plan's
        ``peaks``: float32 FMAs, int8 dot products, bf16 pairs), measured here on every thread: the ceiling
        ``lfmc bench --profile`` sets each matmul against. Best of ``reps`` runs of about ``seconds`` each."""
        threads = int(getattr(self.driver, "num_threads", 1) or 1)
        out = {}
        for fam, p in sorted(self.plan.get("peaks", {}).items()):
            (ishape, idt), (oshape, odt) = p["in"], p["out"]
            a, b = self.driver.alloc(tuple(ishape), idt), self.driver.alloc((threads, *oshape), odt)
            one = {"uint16": 0x3F80}.get(idt, 1)           # 1.0 as bf16 bits; 1 otherwise
            self.driver.write(a, np.full(ishape, one, idt))
            args = [self.driver.device_view(a, tuple(ishape)), self.driver.device_view(b, (threads, *oshape))]
            f, iters = self._funcs[p["kernel"]], 1000
            for _ in range(2):                              # warm up, then size the runs to ``seconds``
                dt = self._timed(lambda: f(*args, threads, iters))
                iters = max(1000, int(iters * seconds / max(dt, 1e-6)))
            best = min((self._timed(lambda: f(*args, threads, iters)) for _ in range(reps)), default=float("inf"))
            out[fam] = threads * iters * p["ops_per_iter"] / best / 1e9
        return out

    def measure_read_bandwidth(self, mib: int = 256, reps: int = 3) -> float | None:
        """GB/s at which this machine's threads read memory, measured here with the artifact's read-peak kernel
        (each thread one contiguous share of a ``mib`` MiB buffer, larger than the caches: how the decode GEMVs
        stream their weights): the ceiling ``lfmc bench --profile`` sets each decode matmul against. Best of
        ``reps`` reads after one untimed. The buffer is at most an eighth of the memory available (at least 64 MiB,
        still larger than a CPU's caches). None for an artifact without the kernel (GPU targets, older builds)."""
        spec = self.plan.get("read_peak")
        if spec is None:
            return None
        avail = available_memory()
        mib = max(64, min(mib, avail >> 23)) if avail else mib        # avail >> 23: an eighth, in MiB
        threads = int(getattr(self.driver, "num_threads", 1) or 1)
        L, accs = int(spec["lanes"]), int(spec["accs"])
        unit = threads * accs
        n = max(unit, (mib << 20) // (4 * L) // unit * unit)
        a, b = self.driver.alloc((n, L), "float32"), self.driver.alloc((threads, accs, L), "float32")
        a[...] = 1.0        # every page touched before it is timed (CPU targets only: host memory, a numpy array)
        args = [self.driver.device_view(a, (n, L)), self.driver.device_view(b, (threads, accs, L))]
        f = self._funcs[spec["kernel"]]
        self._timed(lambda: f(*args, threads))             # untimed: pages and caches warm
        best = min((self._timed(lambda: f(*args, threads)) for _ in range(reps)), default=float("inf"))
        return n * L * 4 / best / 1e9

    def _timed(self, call) -> float:
        """Seconds one ``call`` of kernels takes, the device synchronized after it (the peak probes' timing)."""
        t = time.perf_counter()
        call()
        self.driver.sync()
        return time.perf_counter() - t

    def profile_image(self, patches: np.ndarray, height: int, width: int, reps: int = 3) -> dict[str, float]:
        """Seconds per kernel of the ``vision`` entry (:meth:`profile`'s measure) for one image of ``height`` x
        ``width`` patches (:meth:`encode_image`'s arguments)."""
        self.encode_image(patches, height, width)
        P = int(height) * int(width)
        return self._time_calls("vision", P, ("vision", P, 0) + self._grid, reps)

    def _time_calls(self, entry: str, n: int, key: tuple, reps: int) -> dict[str, float]:
        """Time each launch of the cached calls ``key`` of ``entry`` (summed per kernel, median of ``reps``)."""
        calls = self._calls[key]
        names = [k for k, _ in self._launches(entry, n)]
        times: dict[str, list[float]] = {}
        for _ in range(reps):
            acc: dict[str, float] = {}
            for name, (f, args) in zip(names, calls):
                t = time.perf_counter()
                f(*args)
                self.driver.sync()
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t
            for k, v in acc.items():
                times.setdefault(k, []).append(v)
        return dict(sorted(((k, float(np.median(v))) for k, v in times.items()), key=lambda kv: -kv[1]))

    def launch_summary(self, entry: str, n: int = 1) -> dict[str, dict[str, int]]:
        """Per kernel of one ``entry`` call of ``n`` rows: how many launches, the bytes of parameters they are
        handed, and the floating-point operations they do where the plan records them (dense matmuls: per row,
        times the rows the launch computes, padding included; 0 elsewhere), summed. A dense matmul reads all of
        its parameters once per launch, so with :meth:`profile` this says how fast it streams its weights and
        computes; a gather (embedding) or an MoE kernel reads only some of its parameters."""
        out: dict[str, dict[str, int]] = {}
        for L, (k, args) in zip(self.launches[entry], self._launches(entry, n)):
            s = out.setdefault(k, {"launches": 0, "param_bytes": 0, "flops": 0})
            s["launches"] += 1
            s["param_bytes"] += sum(int(self.params[a.name].nbytes) for a in args if a.kind == "param")
            if L.flops_per_row and args and args[0].kind == "slab":
                s["flops"] += L.flops_per_row * self._rows(args[0].rows, n, entry)
        return out

    def _logits(self, entry: str, n: int) -> np.ndarray:
        a = self._logit_args.get(entry)
        if a is None:
            a = self._logit_args[entry] = Arg.from_json(self.plan["logits"][entry])
        return self.driver.read(self.slabs[a.name], (self._rows(a.rows, n, entry), a.cols))

    # ----------------------------------------------------------------------------------------- sequences
    def new_sequence(self) -> int:
        """A new, empty sequence; raises when all ``max_batch`` slots are taken."""
        used = {s.slot for s in self._seqs.values()}
        free = [i for i in range(self.max_batch) if i not in used]
        if not free:
            raise EngineError(f"all {self.max_batch} sequence slots are in use: release one or load the engine "
                              "with a larger max_batch")
        sid = self._next_id
        self._next_id += 1
        self._seqs[sid] = _Seq(free[0])
        self._clear_slot(free[0])
        return sid

    def _clear_slot(self, slot: int) -> None:
        """A new sequence starts from zero state: the conv windows of ``short_conv`` nodes and recurrences (KV
        caches need no clearing: positions past a sequence's length are never read)."""
        for name, spec in self.plan["state"].items():
            if spec["kind"] in ("conv", "recurrence"):
                self.driver.fill(self.state[name], slot, 0.0)

    def _seq(self, seq: int) -> _Seq:
        try:
            return self._seqs[seq]
        except KeyError:
            raise EngineError(f"unknown sequence {seq!r}") from None

    def reset(self, seq: int) -> None:
        """Forget what ``seq`` has seen (its conv state and KV cache), keeping its slot."""
        s = self._seq(seq)
        s.length, s.pending = 0, []
        self._clear_slot(s.slot)

    def fork(self, seq: int) -> int:
        """A new sequence holding a copy of ``seq``'s state (its conv windows, recurrences and KV cache up to its
        length): both continue from the same prompt without prefilling it twice (OpenAI's ``n``)."""
        self._need_state_ops("fork")
        s = self._flushed(seq)
        new = self.new_sequence()
        d = self._seqs[new]
        for name, grows in self.held_state():
            self.driver.copy_slot(self.state[name], s.slot, d.slot, s.length if grows else None)
        d.length = s.length
        return new

    # ------------------------------------------------------------------------------ state operations
    def held_state(self) -> list[tuple[str, bool]]:
        """The state tensors a sequence owns (not scratch), and whether each grows with the context (KV caches:
        only the rows up to a sequence's length matter)."""
        return list(self._held)

    @property
    def state_ops(self) -> bool:
        """Whether this engine can copy sequence state (fork, snapshot, restore, rollback, verify): not where the
        driver keeps the state itself (the wafer simulator holds it in its PEs)."""
        return not getattr(self.driver, "keeps_state", False)

    def _need_state_ops(self, what: str) -> None:
        if not self.state_ops:
            raise EngineError(f"{what} is not available on the {self.driver.name} driver: it keeps sequence state "
                              "inside the device (the simulated mesh), where the engine cannot copy it")

    def snapshot(self, seq: int, since: int = 0) -> Snapshot:
        """``seq``'s state now, on the host: restoring it and continuing gives what continuing ``seq`` gives.
        ``since``: context-long tensors (KV caches) only from that position on (a prefix cache that holds the
        earlier rows already); such a partial snapshot is not restorable by itself."""
        self._need_state_ops("snapshot")
        s = self._flushed(seq)
        if not 0 <= since <= s.length:
            raise EngineError(f"snapshot since {since}: sequence {seq} holds {s.length} tokens")
        return Snapshot(s.length, {k: self.driver.read_slot(self.state[k], s.slot, s.length, since) if grows
                                   else self.driver.read_slot(self.state[k], s.slot)
                                   for k, grows in self.held_state()}, since)

    def restore(self, snap: Snapshot, seq: int | None = None) -> int:
        """A sequence holding ``snap``'s state: a new one, or ``seq`` overwritten (its history dropped). Refuses a
        snapshot of another artifact or one longer than this engine's context."""
        self._need_state_ops("restore")
        want = dict(self.held_state())
        if snap.start:
            raise EngineError(f"a partial snapshot (rows from {snap.start}) cannot be restored by itself")
        if set(snap.arrays) != set(want):
            raise EngineError("the snapshot holds other state tensors than this artifact's: taken from another model")
        for k, grows in want.items():
            a, buf = snap.arrays[k], self.state[k]
            shape = tuple(buf.shape[2:] if grows else buf.shape[1:])
            if a.dtype != np.dtype(buf.dtype) or tuple(a.shape[1:] if grows else a.shape) != shape \
                    or (grows and a.shape[0] != snap.length):
                raise EngineError(f"the snapshot's {k!r} is {a.dtype}{list(a.shape)}, this artifact's state per "
                                  f"sequence is {np.dtype(buf.dtype)}{list(buf.shape[1:])}: taken from another model")
        if snap.length > self.max_context:
            raise EngineError(f"the snapshot holds {snap.length} tokens, more than this engine's max context "
                              f"{self.max_context}")
        new = self.new_sequence() if seq is None else seq
        s = self._seq(new)
        for k in want:
            self.driver.write_slot(self.state[k], s.slot, snap.arrays[k])
        s.length, s.history, s.pending = snap.length, None, []
        return new

    def track(self, seq: int, depth: int) -> None:
        """Keep what :meth:`rollback` needs to take ``seq`` back by up to ``depth`` tokens (speculative
        decoding's rejected drafts): its fixed-size states after each call and the tokens fed. Sliding-window
        rings hold window - 1 + prefill chunk keys, so ``depth`` may not exceed the prefill chunk on such models."""
        self._need_state_ops("rollback")
        s = self._flushed(seq)
        if depth < 1:
            raise EngineError("track depth must be at least 1")
        if depth > self.prefill_chunk and any("window" in v for v in self.plan["state"].values()):
            raise EngineError(f"rollback depth {depth} exceeds the prefill chunk {self.prefill_chunk}: the "
                              "sliding-window rings would have lost keys")
        s.history = _History(depth, s.length, [(s.length, self._small(s))])

    def _small(self, s: _Seq) -> dict[str, np.ndarray]:
        return {k: self.driver.read_slot(self.state[k], s.slot) for k in self._small_keys}

    def _record(self, s: _Seq, tokens: Sequence[int]) -> None:
        """After a call fed ``tokens`` to tracked ``s``: a checkpoint, the tokens, the history trimmed to depth."""
        h = s.history
        h.tokens.extend(int(t) for t in tokens)
        h.checkpoints.append((s.length, self._small(s)))
        floor = s.length - h.depth                      # keep the newest checkpoint at or before it, and all after
        keep = max(i for i, (n, _) in enumerate(h.checkpoints) if n <= floor) if h.checkpoints[0][0] <= floor else 0
        if keep:
            del h.checkpoints[:keep]
            cut = h.checkpoints[0][0] - h.base
            del h.tokens[:cut]
            h.base += cut

    def rollback(self, seq: int, n: int) -> None:
        """Take ``seq`` back by ``n`` tokens, as if the last ``n`` had never been fed (it must be tracked,
        :meth:`track`, deep enough). KV caches and rings just forget the positions; conv windows and recurrences
        come back from the newest checkpoint at or before the target, and the tokens between it and the target
        (a chunk's accepted part) are fed again, with the sequence's next call (a verify or prefill takes them
        in its chunk: speculative decoding's next verify re-reads them at almost no cost; a batched decode feeds
        them first)."""
        s = self._seq(seq)
        h = s.history
        if h is None:
            raise EngineError(f"sequence {seq} is not tracked: Engine.track(seq, depth) first")
        n = int(n)
        if 0 <= n <= len(s.pending):                      # only tokens not fed yet: nothing to undo in the state
            del s.pending[len(s.pending) - n:]
            return
        n -= len(s.pending)
        s.pending = []
        target = s.length - n
        if n < 0 or target < h.checkpoints[0][0]:
            raise EngineError(f"sequence {seq} can go back {s.length - h.checkpoints[0][0]} tokens, not {n}")
        i = max(j for j, (m, _) in enumerate(h.checkpoints) if m <= target)
        at, small = h.checkpoints[i]
        for k, a in small.items():
            self.driver.write_slot(self.state[k], s.slot, a)
        s.pending = h.tokens[at - h.base:target - h.base]
        del h.checkpoints[i + 1:]
        del h.tokens[at - h.base:]
        s.length = at

    def _flushed(self, seq: int) -> _Seq:
        """``seq`` with the tokens a rollback left pending fed, for what reads its state as it is."""
        s = self._seq(seq)
        if s.pending:
            p, s.pending = s.pending, []
            self.prefill(seq, p)
        return s

    def release(self, seq: int) -> None:
        self._seq(seq)
        del self._seqs[seq]

    def length(self, seq: int) -> int:
        """Tokens the sequence holds (those a rollback left to be fed again included)."""
        s = self._seq(seq)
        return s.length + len(s.pending)

    def _check_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        t = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if t.size and (t.min() < 0 or t.max() >= self.vocab_size):
            raise EngineError(f"token ids must lie in [0, {self.vocab_size})")
        return t.astype(np.int32)

    def prefill(self, seq: int, tokens: Sequence[int], image_rows: np.ndarray | None = None) -> np.ndarray:
        """Feed ``tokens`` to ``seq`` (in chunks); returns the logits [vocab] after the last one. ``image_rows``:
        a VL model's image embeddings [k, D] (:meth:`encode_image`), one per image token of ``tokens``, in
        order."""
        s = self._seq(seq)
        t = self._check_tokens(tokens)
        if s.pending:                       # tokens a rollback left: fed in front, in the same calls
            if image_rows is not None:
                self._flushed(seq)
            else:
                t = np.concatenate([np.asarray(s.pending, np.int32), t])
                s.pending = []
        img_at = self._image_positions(t, image_rows)
        if img_at is not None:
            s.history = None                # image rows cannot be fed again: no rollback across them
        if t.size == 0:
            raise EngineError("prefill needs at least one token")
        if s.length + t.size > self.max_context:
            raise EngineError(f"sequence {seq} would hold {s.length + t.size} tokens, more than the max context "
                              f"{self.max_context}")
        for i in range(0, t.size, self.prefill_chunk):
            c = t[i:i + self.prefill_chunk]
            n = c.size
            self.driver.write(self.inputs["tokens"], c)
            self.driver.write(self.inputs["slots"], np.full(n, s.slot, np.int32))
            self.driver.write(self.inputs["pos"], np.arange(s.length, s.length + n, dtype=np.int32))
            if img_at is not None:
                self._write_image_rows(image_rows, img_at[i:i + n])
            self._run("prefill", n, s.slot)
            s.length += n
        if s.history is not None:
            self._record(s, t.tolist())
        return self._logits("prefill", 0)[0]

    def verify(self, seq: int, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens`` (at most a prefill chunk) and return the logits after each of them [n, vocab]:
        speculative decoding's check of drafted tokens in one call. A prefill of the chunk, then the decode
        entry's LM head over the chunk's final hidden rows (which the prefill leaves in place). Tokens a rollback
        left pending go in front, in the same chunk where they fit."""
        self._need_state_ops("verify")
        t = self._check_tokens(tokens)
        n = t.size
        if not 1 <= n <= self.prefill_chunk:
            raise EngineError(f"verify takes 1 to {self.prefill_chunk} tokens (the prefill chunk), not {n}")
        s = self._seq(seq)
        if len(s.pending) + n > self.prefill_chunk:
            self._flushed(seq)
        m = len(s.pending) + n
        head = self._calls.get(("head", m))
        if head is None:
            k, args = self._launches("decode", m)[-1]
            out = Arg.from_json(self.plan["logits"]["decode"])
            if not any(a.kind == "slab" and a.name == out.name for a in args):
                raise EngineError(f"{self.root}: the decode entry does not end with the LM head: cannot verify")
            head = self._calls[("head", m)] = [(self._funcs[k], [self._arg(a, m, "decode", 0) for a in args])]
        self.prefill(seq, t)
        for f, args in head:
            f(*args)
        self.driver.sync()
        return self._logits("decode", m)[m - n:m]

    def check_drafts(self, seq: int, last: int, draft: Sequence[int], sampling: tuple[float, int, float],
                     rng: np.random.Generator, qs: list[np.ndarray] | None = None) -> tuple[list[int], np.ndarray]:
        """One speculative step of ``seq``: feed ``last`` (the newest token, not fed yet) and ``draft`` in one
        :meth:`verify`, accept drafts by speculative sampling under ``sampling`` (temperature, top-k, top-p;
        ``qs``: the drafter's distributions, None for a deterministic drafter) and roll the rejected ones back.
        Returns the accepted drafts followed by the next token (not fed yet), and the verify's logits rows."""
        rows = self.verify(seq, [last, *draft])
        got = accept_drafts([probs(r, *sampling) for r in rows], list(draft), rng, qs or None)
        if len(got) - 1 < len(draft):
            self.rollback(seq, len(draft) - len(got) + 1)
        return got, rows

    # ------------------------------------------------------------------------------------------- images
    @property
    def vision(self) -> dict[str, Any] | None:
        """A VL artifact's image geometry (patch_dim, grid, factor, max_patches, ...), or None."""
        return self.plan.get("vision")

    def encode_image(self, patches: np.ndarray, height: int, width: int) -> np.ndarray:
        """Image-token embeddings [height * width / factor^2, D] of one image (or tile) given as ``patches``
        [height * width, patch_dim] (row-major in its height x width patch grid, :mod:`lfmc.runtime.vision`)."""
        from ..mixers import merge_order, resize_weights

        v = self.vision
        if v is None:
            raise EngineError(f"{self.root}: this artifact has no vision encoder (not a vision-language model)")
        P = int(height) * int(width)
        if min(height, width) < 1 or P > v["max_patches"]:
            raise EngineError(f"an image of {height} x {width} patches: the artifact takes 1 to {v['max_patches']}")
        p = np.ascontiguousarray(patches, np.float32)
        if p.shape != (P, v["patch_dim"]):
            raise EngineError(f"patches {p.shape} do not fit a {height} x {width} grid of {v['patch_dim']} values")
        if height % v["factor"] or width % v["factor"]:
            raise EngineError(f"a {height} x {width} patch grid does not split into {v['factor']} x {v['factor']} "
                              "blocks")
        self.driver.write(self.slabs[v["patches"]], p.reshape(-1))
        if v["layout"] == "raster":         # LFM2-VL: positions resized to this grid, patches gathered into tokens
            self.driver.write(self.slabs[v["pos_weights"]],
                              resize_weights(int(height), int(width), v["grid"]).reshape(-1))
            self.driver.write(self.inputs["order"], merge_order(int(height), int(width), v["factor"]))
        self._grid = (int(height), int(width))          # LFM3-VL's kernels take the grid as scalars
        self.driver.write(self.inputs["slots"], np.zeros(P, np.int32))          # attention over the image's rows:
        self.driver.write(self.inputs["pos"], np.full(P, P - 1, np.int32))      # every row sees all of them
        self._run("vision", P)
        a = Arg.from_json(v["output"])
        return np.array(self.driver.read(self.slabs[a.name], (self._rows(a.rows, P, "vision"), a.cols)))

    def processor(self):
        """The artifact's image preprocessing (:class:`lfmc.runtime.vision.ImageProcessor`)."""
        if self.vision is None:
            raise EngineError(f"{self.root}: this artifact takes no images (not a vision-language model)")
        if self._processor is None:
            from .vision import make_processor

            self._processor = make_processor(self.vision["layout"], self.manifest.get("processor") or {})
        return self._processor

    def prepare(self, prompt: str | Sequence[int], images: Sequence[Any] = ()) -> tuple[list[int], np.ndarray | None]:
        """Token ids and image embeddings for a prompt with ``images`` (paths, bytes, PIL images or uint8
        arrays): :meth:`expand_images`, then :meth:`encode_images`."""
        if not images:
            return self.encode(prompt), None
        ids, processed = self.expand_images(prompt, images)
        return ids, self.encode_images(processed)

    def expand_images(self, prompt: str | Sequence[int], images: Sequence[Any]) -> tuple[list[int], list[Any]]:
        """Preprocess ``images`` (:class:`lfmc.runtime.vision.ImageProcessor`; no kernel runs, so any thread may
        call it) and expand the prompt: each image placeholder (``<image>`` in text; the image token id in a list
        of ids) becomes its image's tokens; a prompt without placeholders gets the images in front."""
        from .vision import IMAGE_MARKER

        proc = self.processor()
        tok = self.plan["image"]["image_token"]
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise EngineError("this artifact has no tokenizer: pass token ids")
            parts = prompt.split(IMAGE_MARKER)
            if len(parts) == 1:
                parts = [""] * len(images) + parts
            segs: list[list[int] | None] = []
            for i, p in enumerate(parts):
                if i:
                    segs.append(None)
                if p:
                    segs.append(self.tokenizer.encode(p))
        else:
            ids = [int(t) for t in prompt]
            if tok not in ids:
                ids = [tok] * len(images) + ids
            segs = []
            for t in ids:
                if t == tok:
                    segs.append(None)
                elif segs and segs[-1] is not None:
                    segs[-1].append(t)
                else:
                    segs.append([t])
        n_marks = sum(1 for x in segs if x is None)
        if n_marks != len(images):
            raise EngineError(f"the prompt has {n_marks} image placeholders for {len(images)} images")
        token_id = getattr(self.tokenizer, "token_id", None)
        out: list[int] = []
        processed = []
        it = iter(images)
        for x in segs:
            if x is not None:
                out += x
                continue
            img = proc.process(next(it))
            processed.append(img)
            out += proc.image_token_ids(img, tok, token_id)
        return out, processed

    def encode_images(self, processed: Sequence[Any]) -> np.ndarray:
        """The image-token embeddings of preprocessed images (:meth:`expand_images`), in prompt order."""
        rows = [self.encode_image(p.patches, p.height, p.width) for img in processed for p in img.pieces]
        return np.concatenate(rows).astype(np.float32)

    def _image_positions(self, t: np.ndarray, image_rows: np.ndarray | None) -> np.ndarray | None:
        """For each token, the index of its image row (-1: a text token), checked against ``image_rows``."""
        im = self.plan.get("image")
        if image_rows is None:
            if im is not None and np.any(t == im["image_token"]):
                raise EngineError(f"the prompt holds image tokens ({int(np.sum(t == im['image_token']))}) but no "
                                  "image embeddings were given")
            return None
        if im is None:
            raise EngineError(f"{self.root}: this artifact takes no images (not a vision-language model)")
        is_img = t == im["image_token"]
        k = int(is_img.sum())
        if getattr(image_rows, "shape", None) != (k, im["cols"]):
            raise EngineError(f"image embeddings {getattr(image_rows, 'shape', None)} do not fit the prompt's {k} "
                              f"image tokens of width {im['cols']}")
        at = np.full(t.size, -1, np.int64)
        at[is_img] = np.arange(k)
        return at

    def _write_image_rows(self, image_rows: np.ndarray, at: np.ndarray) -> None:
        rows = np.zeros((at.size, image_rows.shape[1]), np.float32)
        rows[at >= 0] = image_rows[at[at >= 0]]
        self.driver.write(self.slabs[self.plan["image"]["slab"]], rows.reshape(-1))

    def decode(self, seqs: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """One token for each sequence in one batched call; returns logits [len(seqs), vocab]. Its Python side is
        kept to a few microseconds: for small models it is a real share of the step."""
        n = len(seqs)
        if n != len(tokens) or not n:
            raise EngineError("decode needs one token per sequence, and at least one sequence")
        if n > self.max_batch:
            raise EngineError(f"decode batch {n} exceeds max_batch {self.max_batch}")
        try:
            ss = [self._seqs[q] for q in seqs]
        except (KeyError, TypeError):
            raise EngineError(f"unknown sequence among {list(seqs)!r}") from None
        if any(s.pending for s in ss):
            if n == 1:                              # one sequence: its refeed and the token in one call
                return self.verify(seqs[0], tokens)[-1:]
            for q in seqs:
                self._flushed(q)
        slots = np.array([s.slot for s in ss], np.int32)
        pos = np.array([s.length for s in ss], np.int32)
        if n > 1 and np.unique(slots).size != n:
            raise EngineError("a sequence appears twice in one decode batch")
        if pos.max() >= self.max_context:
            q = seqs[int(np.argmax(pos >= self.max_context))]
            raise EngineError(f"sequence {q} reached the max context {self.max_context}")
        self.driver.write(self.inputs["tokens"], self._check_tokens(tokens))
        self.driver.write(self.inputs["slots"], slots)
        self.driver.write(self.inputs["pos"], pos)
        self._run("decode", n)
        for s, t in zip(ss, tokens):
            s.length += 1
            if s.history is not None:
                self._record(s, (t,))
        return self._logits("decode", n)[:n]

    # --------------------------------------------------------------------------------------- generation
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise EngineError("this artifact has no tokenizer: pass token ids")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    def decode_text(self, ids: Sequence[int]) -> str | None:
        return self.tokenizer.decode(list(ids)) if self.tokenizer is not None else None

    def stream(self, prompt: str | Sequence[int], max_new_tokens: int = 32, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop: Sequence[int] | None = None, images: Sequence[Any] = (),
               image_rows: np.ndarray | None = None, prefix_cache: Any = None,
               speculate: str | Engine | None = None, draft_k: int = 4, adaptive: bool = True) -> Iterator[int]:
        """Yield new tokens as they are sampled. ``stop``: token ids that end generation (default: EOS;
        pass ``[]`` to never stop early). ``images``: for a vision-language artifact (:meth:`prepare`);
        ``image_rows``: embeddings already encoded for the image tokens of ``prompt`` (token ids).
        ``prefix_cache``: a :class:`lfmc.runtime.prefix_cache.PrefixCache` of this engine: the prompt resumes
        from its longest cached prefix, and the state at the end (prompt and answer) is stored in it.
        ``speculate="ngram"``: speculative decoding with prompt-lookup drafts (up to ``draft_k`` tokens that
        followed the latest earlier occurrence of the context's last 3, 2 or 1 tokens), verified in one call
        (:meth:`verify`) and the rejected ones rolled back: at temperature 0 the same tokens as plain greedy
        decoding, with sampling the same distribution (speculative sampling); fewer calls when the text repeats
        itself. ``speculate=<Engine>``: drafts sampled from that (smaller) model, which must share this one's
        tokenizer (:class:`lfmc.runtime.drafting.ModelDrafter`). The draft length adapts to the measured gain
        (drafting and verifying against plain decode steps; what it learnt carries over to the next call), and
        drafting pauses while it does not pay (``adaptive=False``: always ``draft_k``). With sampling the tokens
        follow the model's distribution either way, but a seed reproduces them only at a fixed draft length
        (``adaptive=False``). Counts and times in ``self.last_speculation``."""
        if images:
            ids, image_rows = self.prepare(prompt, images)
        else:
            ids = self.encode(prompt)
        if not ids:
            raise EngineError("the prompt is empty")
        if len(ids) + max_new_tokens > self.max_context:
            raise EngineError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the max "
                              f"context {self.max_context}")
        stops = set(stop) if stop is not None else ({self.eos_token_id} if self.eos_token_id is not None else set())
        drafter = new_drafter(self, speculate, draft_k)() if speculate is not None else None
        rng = np.random.default_rng(seed)
        seq = self.new_sequence()
        cache = prefix_cache if image_rows is None else None
        fed = list(ids)
        try:
            snap = cache.lookup(ids) if cache is not None else None
            if snap is not None:
                self.restore(snap, seq)
            start = snap.length if snap is not None else 0
            logits = self.prefill(seq, ids[start:]) if image_rows is None else self.prefill(seq, ids, image_rows)
            if drafter is not None:
                sp = (temperature, top_k, top_p)
                yield from self._speculate(seq, fed, sample(logits, *sp, rng), max_new_tokens, stops, drafter,
                                           draft_k, sp, rng, adaptive)
                return
            for i in range(max_new_tokens):
                tok = sample(logits, temperature, top_k, top_p, rng)
                yield tok
                if tok in stops or i == max_new_tokens - 1:
                    return
                logits = self.decode([seq], [tok])[0]
                fed.append(tok)
        finally:
            if drafter is not None:
                drafter.close()
            if cache is not None and self.length(seq) == len(fed):
                cache.store(seq, fed)
            self.release(seq)

    ngram_draft = staticmethod(ngram_draft)

    def _speculate(self, seq: int, fed: list[int], tok: int, max_new: int, stops: set[int], drafter: Drafter,
                   k: int, sp: tuple[float, int, float], rng: np.random.Generator,
                   adaptive: bool = True) -> Iterator[int]:
        """Speculative decoding: ``fed`` are the tokens in ``seq``'s state (kept up to date), ``tok`` the first
        generated token (not fed yet), ``sp`` the sampling settings (temperature, top-k, top-p): the drafter
        proposes, :meth:`verify` checks in one call, :func:`lfmc.runtime.sampling.accept_drafts` accepts (greedy
        at temperature 0, speculative sampling else) and the rejected tail is rolled back; the draft length from
        :class:`SpecControl`, which weighs drafting + verifying against plain decode steps."""
        stats = self.last_speculation = {"verify_calls": 0, "decode_calls": 0, "drafted": 0, "accepted": 0,
                                         "paused_steps": 0,
                                         "draft_s": 0.0, "verify_s": 0.0, "decode_s": 0.0}
        key = (drafter.key, k, adaptive)
        ctl = self._spec.get(key)
        if ctl is None:                                # what it learnt (draft length, pauses) carries over
            ctl = self._spec[key] = SpecControl(k, adaptive)
        self.track(seq, k + 1)
        count = 0
        while True:
            yield tok
            count += 1
            if tok in stops or count == max_new:
                return
            w = ctl.want()
            want = min(w, max_new - count - 1)
            t = time.perf_counter()
            draft, qs = drafter.draft(fed + [tok], want, sp, rng) if want > 0 else ([], None)
            t_draft = time.perf_counter()
            if not draft:
                stats["paused_steps"] += w == 0
                logits = self.decode([seq], [tok])[0]
                ctl.decoded(time.perf_counter() - t_draft)
                stats["decode_s"] += time.perf_counter() - t_draft
                fed.append(tok)
                stats["decode_calls"] += 1
                tok = sample(logits, *sp, rng)
                continue
            got, _ = self.check_drafts(seq, tok, draft, sp, rng, qs)
            j = len(got) - 1                            # drafts accepted; got[-1] is the next token
            t_end = time.perf_counter()
            ctl.verified(t_end - t, len(draft), j)
            stats["draft_s"] += t_draft - t
            stats["verify_s"] += t_end - t_draft
            stats["verify_calls"] += 1
            stats["drafted"] += len(draft)
            stats["accepted"] += j
            fed.append(tok)
            fed.extend(draft[:j])
            for d in draft[:j]:
                yield d
                count += 1
                if d in stops or count == max_new:
                    return
            tok = got[-1]

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 32, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[int] | None = None, images: Sequence[Any] = (),
                 prefix_cache: Any = None, speculate: str | Engine | None = None, draft_k: int = 4,
                 adaptive: bool = True) -> GenerationResult:
        """Generate up to ``max_new_tokens``; returns tokens, text (with a tokenizer) and timings. ``images``:
        for a vision-language artifact, the images of the prompt's ``<image>`` placeholders (or in front).
        ``prefix_cache``, ``speculate``, ``draft_k``, ``adaptive``: as :meth:`stream`'s."""
        t0 = time.perf_counter()
        ids, rows = self.prepare(prompt, images) if images else (self.encode(prompt), None)
        out: list[int] = []
        t1 = None
        stops = set(stop) if stop is not None else ({self.eos_token_id} if self.eos_token_id is not None else set())
        for tok in self.stream(ids, max_new_tokens, temperature, top_k, top_p, seed, stop, image_rows=rows,
                               prefix_cache=prefix_cache, speculate=speculate, draft_k=draft_k,
                               adaptive=adaptive):
            if t1 is None:
                t1 = time.perf_counter()
            out.append(tok)
        t2 = time.perf_counter()
        reason = "stop" if out and out[-1] in stops else "length"
        return GenerationResult(out, self.decode_text(out), len(ids), (t1 or t2) - t0, t2 - (t1 or t2), reason)
