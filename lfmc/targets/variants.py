"""ISA variants: kernels built twice, with an optional CPU feature and in the family that does without, the
runtime running each kernel's best variant the loading CPU has (as ggml picks its kernels at run time). Each CPU
backend gives its table (:class:`OptionalFeatures`): x86 VNNI / AVX512-BF16 (lfmc/targets/host), Arm i8mm / bf16
(lfmc/targets/arm); the rest of an artifact is compiled without those features."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# which knob field a kernel maker's instruction family comes from
_USES = {"make_matmul_a8": lambda kw: "dot", "make_matmul_bf16": lambda kw: "bf16dot",
         "make_peak": lambda kw: {"int8": "dot", "bf16": "bf16dot"}.get(kw.get("kind"))}


@dataclass(frozen=True)
class OptionalFeatures:
    """A CPU family's optional features. ``llvm``: manifest feature key -> LLVM attribute; ``fallbacks``: (knob
    field, its value) -> (the features that value needs (the ones the target has are needed), what the fallback's
    knobs replace). A fallback may have its own (x86: AMX -> VNNI -> AVX2), so a kernel may have a chain of them."""

    llvm: dict[str, str]
    fallbacks: dict[tuple[str, str], tuple[tuple[str, ...], dict[str, Any]]]

    def variants(self, kernels: dict, feats: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Give every kernel of ``kernels`` (name -> KernelSpec, changed in place) that uses an optional feature of
        ``feats`` its fallback twin (``BASE__<family>``, the same arguments; the twin its own where it needs an
        optional feature too) and mark it with the features it needs; returns the manifest's ``isa_variants``:
        name -> {"needs": [...], "fallback": name}."""
        out: dict[str, dict[str, Any]] = {}
        base: dict[str, str] = {}                       # a twin -> the kernel it was made for (its name's base)
        todo = list(kernels)
        while todo:
            name = todo.pop(0)
            spec = kernels[name]
            field = _USES.get(spec.maker_name, lambda kw: None)(spec.kw)
            kn = spec.knobs
            fb_of = self.fallbacks.get((field, getattr(kn, field))) if field and kn is not None else None
            if fb_of is None:
                continue
            features, repl = fb_of
            needs = tuple(f for f in features if feats.get(f))
            if not needs:
                continue
            key = next(k for k, v in spec.kw.items() if v is kn)
            fb = base[name] + f"__{repl[field]}" if name in base else f"{name}__{repl[field]}"
            base[fb] = base.get(name, name)
            kernels[fb] = dataclasses.replace(spec, kw={**spec.kw, key: dataclasses.replace(kn, **repl)})
            kernels[name] = dataclasses.replace(spec, needs=needs)
            out[name] = {"needs": list(needs), "fallback": fb}
            todo.append(fb)
        return out

    def base_features(self, feats: dict[str, Any]) -> dict[str, Any]:
        """What an artifact with ISA variants requires of a CPU: ``feats`` without the optional features."""
        return {**feats, **{f: False for f in self.llvm if f in feats}}

    def record(self, feats: dict[str, Any], variants: dict[str, Any] | None) -> dict[str, Any]:
        """The manifest target record's ``features`` (and ``isa_variants`` when there are any): what the runtime
        checks a CPU against and picks variants by."""
        if not variants:
            return {"features": feats}
        return {"features": self.base_features(feats), "isa_variants": variants}

    def without(self, target, feats: dict[str, Any]):
        """``target`` with the optional features it has switched off (the kernels that run on every CPU)."""
        import tvm

        off = [f"-{self.llvm[f]}" for f in self.llvm if feats.get(f)]
        if not off:
            return target
        cfg = dict(target.export())
        cfg["mattr"] = list(cfg.get("mattr") or []) + off
        return tvm.target.Target(cfg)

    def targets(self, kernels: dict, target, feats: dict[str, Any]):
        """A function giving each kernel spec of ``kernels`` the (target, build-cache key) to compile it for: the
        full ``target`` for those that need an optional feature (``KernelSpec.needs``), ``target`` without the
        optional features for the rest."""
        from . import cache

        base = self.without(target, feats) if any(k.needs for k in kernels.values()) else target
        keyed = {id(t): (t, cache.target_key(t)) for t in (target, base)}
        return lambda spec: keyed[id(target if spec.needs else base)]
