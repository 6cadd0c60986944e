"""llama.cpp as a peer: the same seeded random weights converted to GGUF, measured with llama-bench.

Used by the benchmark scripts (``--llama-cpp``); not part of lfmc. Build the peer once per machine with
``benchmarks/build_llama_cpp.sh`` (about 15 minutes on 2 cores; recipe: ../shared/recipes/llama-cpp-bench.md).

    .venv/bin/python benchmarks/llamacpp_peer.py --preset lfm2-350m --type Q8_0      # one llama-bench run

GGUF types and the lfmc settings they correspond to: F32 = f32, F16 = --dtype f16, BF16 = --dtype bf16,
Q8_0 = --quant q8 (llama.cpp: blocks of 32 with one f16 scale; lfmc: one scale per output channel),
Q4_0 = --quant q4g32 (both: symmetric 4-bit in groups of 32; llama-quantize keeps the embedding in Q6_K).
Q8_0 and Q4_0 run with ``--repack 0``: llama.cpp's AMX/repacked kernels die with SIGILL on some virtual machines.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = Path(os.environ.get("LFMC_LLAMA_CPP_DIR", Path.home() / ".cache" / "lfmc-bench" / "llama.cpp"))
TYPE_OF = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8": "Q8_0", "q4g32": "Q4_0"}
CONVERT_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}

# run the converter with its tokenizer check relaxed: a stand-in tokenizer has no known pre-tokenizer hash
_CONVERT_WRAPPER = """
import sys, runpy
sys.path.insert(0, {src!r}); sys.path.insert(1, {src!r} + '/gguf-py')
import conversion.base as b
b.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'lfm2'
sys.argv = ['convert_hf_to_gguf.py'] + {args!r}
runpy.run_path({src!r} + '/convert_hf_to_gguf.py', run_name='__main__')
"""


def find(root: Path | str | None = None) -> Path | None:
    """The llama.cpp build directory (with bin/llama-bench), or None when it has not been built."""
    d = Path(root) if root else DEFAULT_DIR
    return d if (d / "bin" / "llama-bench").exists() and (d / "bin" / "llama-quantize").exists() else None


def _src(d: Path) -> Path:
    """The vendored llama.cpp source tree (converter, gguf-py) inside the build directory."""
    found = sorted(d.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found:
        raise FileNotFoundError(f"no llama.cpp source under {d}: run benchmarks/build_llama_cpp.sh")
    return found[-1].parent


def save_hf(preset: str, seed: int, out: Path) -> Path:
    """The preset's seeded random weights as a transformers checkpoint directory, with a byte-level BPE
    tokenizer (256 tokens, one merge) so that the GGUF converter has one to read."""
    if (out / "config.json").exists():
        return out
    from lfmc.compile import load_source
    from lfmc.frontend.reference import build_hf_model

    m = load_source(preset, seed=seed)
    model = build_hf_model(m.provenance["config"], m.weights)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp)
    _byte_tokenizer(tmp)        # llama.cpp refuses a BPE vocabulary without merges: one merge, in the last id
    tmp.rename(out)
    return out


def _byte_tokenizer(out: Path) -> None:
    """A byte-level BPE tokenizer (256 tokens, one merge) beside a checkpoint: the GGUF converter needs one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet[:255])}
    vocab["Ġt"] = 255
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="Ġ", eos_token="Ġ").save_pretrained(out)


def save_hf_vl(hf_model, model, out: Path) -> tuple[Path, Path]:
    """A transformers LFM2-VL model (lfmc's seeded weights; ``model`` the lfmc Model) as the two checkpoint
    directories llama.cpp's converter reads: the VL one (for ``--mmproj``: the vision tower and projector, with
    transformers' default image processor settings) and the decoder alone as ``Lfm2ForCausalLM`` (the text GGUF:
    the converter has no text class for the VL architecture); each with a byte tokenizer."""
    from lfmc.frontend.reference import build_hf_model
    from lfmc.frontend.vision import text_config
    from lfmc.runtime.vision import DEFAULTS

    text = out.with_name(out.name + "-text")
    if not (out / "config.json").exists():
        from safetensors.torch import save_file

        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        hf_model.config.architectures = [type(hf_model).__name__]
        hf_model.config.save_pretrained(tmp)
        # the vision tower and projector only, under the hub checkpoints' names (transformers 5 renames
        # `vision_tower.vision_model.` on load; llama.cpp's converter reads the hub names)
        sd = {k.replace("model.vision_tower.", "model.vision_tower.vision_model."): v.contiguous()
              for k, v in hf_model.state_dict().items() if k.startswith(("model.vision_tower.",
                                                                         "model.multi_modal_projector."))}
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _byte_tokenizer(tmp)
        proc = {k: v for k, v in DEFAULTS.items() if k != "use_image_special_tokens"}
        (tmp / "preprocessor_config.json").write_text(json.dumps(
            proc | {"image_processor_type": "Lfm2VlImageProcessor", "size": {"height": 512, "width": 512}}))
        tmp.rename(out)
    if not (text / "config.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix=text.name + ".", dir=text.parent))
        build_hf_model(text_config(model.provenance["config"]), model.weights_of(model.graph)).save_pretrained(tmp)
        _byte_tokenizer(tmp)
        tmp.rename(text)
    return out, text


def gguf_vl(d: Path, hf: Path, text: Path) -> tuple[Path, Path]:
    """(text model F32 GGUF, vision projector F32 GGUF ``--mmproj``) of an LFM2-VL checkpoint, cached beside it."""
    out, mm = hf.parent / f"{hf.name}-F32.gguf", hf.parent / f"{hf.name}-mmproj-F32.gguf"
    for dst, src, extra in ((out, text, []), (mm, hf, ["--mmproj"])):
        if dst.exists():
            continue
        tmp = dst.with_suffix(".tmp")
        code = _CONVERT_WRAPPER.format(src=str(_src(d)), args=[str(src), "--outtype", "f32", "--outfile", str(tmp)]
                                       + extra)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf {' '.join(extra)} failed:\n{r.stderr[-3000:]}")
        tmp.rename(dst)
    return out, mm


def mtmd(d: Path, model: Path, mmproj: Path, image: Path, prompt: str, n: int, threads: int = 2) -> dict:
    """One llama-mtmd-cli run (greedy, ``n`` new tokens, ChatML), timings from its verbose log: image encode
    (every slice or batch), the prompt's prefill (image tokens and the template's text tokens, as
    ``n_prompt``), and decode tokens/s."""
    cmd = [str(d / "bin" / "llama-mtmd-cli"), "-m", str(model), "--mmproj", str(mmproj), "--image", str(image),
           "-p", prompt, "-n", str(n), "-t", str(threads), "--temp", "0", "-c", "4096", "--ignore-eos",
           "--chat-template", "chatml", "--perf", "-v"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"llama-mtmd-cli failed ({p.returncode}): {p.stderr[-2000:]}")
    log = p.stdout + p.stderr
    enc = sum(int(x) for x in re.findall(r"(?:slice encoded in|mtmd batch encoding done in) (\d+) ms", log))
    pe = re.search(r"prompt eval time =\s*([0-9.]+) ms /\s*(\d+) tokens", log)
    ev = re.search(r"(?<!prompt )eval time =\s*([0-9.]+) ms /\s*(\d+) runs.*?([0-9.]+) tokens per second", log)
    return {"encode_s": enc / 1e3, "prompt_eval_s": float(pe.group(1)) / 1e3 if pe else None,
            "n_prompt": int(pe.group(2)) if pe else None, "decode_tok_s": float(ev.group(3)) if ev else None,
            "log_tail": "\n".join(x for x in log.splitlines() if "ms" in x)[-1500:]}


def gguf(d: Path, hf: Path, gtype: str) -> Path:
    """``hf`` converted to GGUF ``gtype`` (F32, F16, BF16, Q8_0 by the converter; Q4_0 by llama-quantize from F32),
    cached beside ``hf``."""
    out = hf.parent / f"{hf.name}-{gtype}.gguf"
    if out.exists():
        return out
    if gtype in CONVERT_TYPES:
        tmp = out.with_suffix(".tmp")
        code = _CONVERT_WRAPPER.format(src=str(_src(d)), args=[str(hf), "--outtype", CONVERT_TYPES[gtype],
                                                                 "--outfile", str(tmp)])
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf failed:\n{r.stderr[-2000:]}")
    else:
        f32 = gguf(d, hf, "F32")
        tmp = out.with_suffix(".tmp")
        subprocess.run([str(d / "bin" / "llama-quantize"), str(f32), str(tmp), gtype, "2"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp.rename(out)
    return out


def bench(d: Path, model: Path, prefill: int = 512, decode: int = 64, reps: int = 5, threads: int = 2,
          repack: bool = False) -> dict:
    """One llama-bench run: prefill and decode tokens/s (means over ``reps``, as llama-bench reports) and the
    process's peak RSS in bytes."""
    cmd = ["/usr/bin/time", "-f", "%M", str(d / "bin" / "llama-bench"), "-m", str(model), "-p", str(prefill),
           "-n", str(decode), "-r", str(reps), "-t", str(threads), "-o", "json"]
    if not repack:
        cmd += ["--repack", "0"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({p.returncode}): {p.stderr[-2000:]}")
    rows = json.loads(p.stdout)
    out = {"prefill": {}, "decode": {}, "repack": repack}
    for r in rows:
        if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0:
            out["prefill"][str(r["n_prompt"])] = r["avg_ts"]
        elif r.get("n_gen", 0) > 0:
            out["decode"]["1"] = r["avg_ts"]
    rss = [int(x) for x in re.findall(r"^(\d+)\s*$", p.stderr, re.M)]
    out["memory"] = {"peak_rss": rss[-1] * 1024 if rss else None}
    return out


def bench_depth(d: Path, model: Path, depth: int, decode: int = 16, kv: str = "f16", reps: int = 3,
                threads: int = 2) -> dict:
    """llama-bench decoding ``decode`` tokens after ``depth`` positions of context (``-d``), its KV cache in ``kv``
    (f16, llama.cpp's default, f32, or q8_0 with flash attention, which a quantized V cache needs): tokens/s (mean
    over ``reps``) and the process's peak RSS in bytes."""
    cmd = ["/usr/bin/time", "-f", "%M", str(d / "bin" / "llama-bench"), "-m", str(model), "-p", "0", "-n",
           str(decode), "-d", str(depth), "-r", str(reps), "-t", str(threads), "-ctk", kv, "-ctv", kv, "-o", "json",
           "--repack", "0"] + (["-fa", "on"] if kv.startswith("q") else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({p.returncode}): {p.stderr[-2000:]}")
    rows = [r for r in json.loads(p.stdout) if r.get("n_gen", 0) > 0]
    rss = [int(x) for x in re.findall(r"^(\d+)\s*$", p.stderr, re.M)]
    return {"decode_tps": rows[-1]["avg_ts"], "peak_rss": rss[-1] * 1024 if rss else None, "kv": kv}


def batched_bench(d: Path, model: Path, npp: int = 128, ntg: int = 128, npl: tuple[int, ...] = (1, 2, 4, 8, 16),
                  threads: int = 2, repack: bool = False) -> dict[int, float]:
    """One llama-batched-bench run (``-c 4096 -b 2048 -ub 512``, as issue 28 names it): aggregate decode tokens/s
    (its S_TG: ``npl`` sequences x ``ntg`` tokens over the decode time, prefill excluded) per sequence count."""
    cmd = [str(d / "bin" / "llama-batched-bench"), "-m", str(model), "-c", "4096", "-b", "2048", "-ub", "512",
           "-npp", str(npp), "-ntg", str(ntg), "-npl", ",".join(map(str, npl)), "-t", str(threads),
           "--output-format", "jsonl"]
    if not repack:
        cmd += ["--no-repack"]          # (batched-bench takes a flag; llama-bench takes --repack 0)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed ({p.returncode}): {p.stderr[-2000:]}")
    rows = [json.loads(x) for x in (p.stdout + "\n" + p.stderr).splitlines() if x.startswith('{"n_kv_max"')]
    return {int(r["pl"]): float(r["speed_tg"]) for r in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--type", default="F32", choices=["F32", "F16", "BF16", "Q8_0", "Q4_0"])
    ap.add_argument("--dir", default=None, help="llama.cpp build (default $LFMC_LLAMA_CPP_DIR or ~/.cache/...)")
    ap.add_argument("--work", default="build/bench", help="where the checkpoint and GGUF files go")
    a = ap.parse_args()
    d = find(a.dir)
    if d is None:
        print("llama.cpp is not built: run benchmarks/build_llama_cpp.sh first", file=sys.stderr)
        return 2
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    hf = save_hf(a.preset, a.seed, work / f"{a.preset}-s{a.seed}.hf")
    print(json.dumps(bench(d, gguf(d, hf, a.type)), indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
