"""CLI compile / run / bench on the tiny preset."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lfmc.cli import main


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    assert main(["compile", "lfm2-moe-tiny", "--init-std", "0.25", "-o", str(d / "a"), "--max-batch", "2",
                 "-q"]) == 0
    return d / "a"


def test_run_tokens_and_prompt(art, capsys):
    capsys.readouterr()
    assert main(["run", str(art), "--tokens", "1,2,3", "--max-new-tokens", "5", "--ignore-eos", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["tokens"]) == 5 and r["prompt_tokens"] == 3 and r["stop_reason"] == "length"
    assert main(["run", str(art), "--prompt", "hi", "--max-new-tokens", "3", "--ignore-eos", "--json"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["prompt_tokens"] == 2 and isinstance(r2["text"], str)
    # sampling is seeded
    outs = []
    for _ in range(2):
        main(["run", str(art), "--tokens", "9", "--max-new-tokens", "6", "--temperature", "1.0", "--top-k", "20",
              "--seed", "4", "--ignore-eos", "--json"])
        outs.append(json.loads(capsys.readouterr().out)["tokens"])
    assert outs[0] == outs[1]


def test_run_errors(art, capsys):
    assert main(["run", str(art), "--tokens", "1", "--prompt", "x"]) == 2
    assert main(["run", str(art), "--tokens", "999"]) == 2
    assert "token ids must lie in" in capsys.readouterr().err


def test_bench_with_torch_baseline(art, capsys):
    capsys.readouterr()
    assert main(["bench", str(art), "--prefill", "16", "--decode-steps", "4", "--reps", "1", "--baseline", "torch",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for side in ("lfmc", "torch"):
        assert r[side]["prefill"]["16"] > 0 and r[side]["decode"]["1"] > 0 and r[side]["memory"]["peak_rss"] > 0


def test_bench_profile_accounts_for_every_launch(art, capsys):
    """--profile: every decode launch is counted once, and each dense matmul's weight bytes are those of the
    parameters the plan hands it (recomputed here from the manifest)."""
    capsys.readouterr()
    assert main(["bench", str(art), "--prefill", "16", "--decode-steps", "4", "--reps", "1", "--profile",
                 "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["profile"]
    plan = json.loads((art / "manifest.json").read_text())["plan"]
    launches = plan["entries"]["decode"]
    rows = {r["kernel"]: r for r in p["kernels"]}
    assert set(rows) == {L["kernel"] for L in launches}
    assert p["launches"] == len(launches) == sum(r["launches"] for r in rows.values())
    assert all(r["seconds"] > 0 for r in rows.values()) and abs(sum(r["share"] for r in rows.values()) - 1) < 1e-9
    nbytes = lambda name: int(np.prod(plan["params"][name]["shape"])) * np.dtype(plan["params"][name]["dtype"]).itemsize
    mm = {k for k in rows if k.startswith("k_mm_")}
    assert mm, "the tiny MoE model has dense projections"
    for k in mm:
        want = sum(nbytes(a[1]) for L in launches if L["kernel"] == k for a in L["args"] if a[0] == "param")
        assert rows[k]["weight_bytes"] == want and rows[k]["gbs"] > 0
        # float32 weights: two flops per weight and row (the weight is the launch's first parameter)
        flops = sum(2 * int(np.prod(plan["params"][next(a[1] for a in L["args"] if a[0] == "param")]["shape"]))
                    for L in launches if L["kernel"] == k)
        assert rows[k]["flops"] == flops and rows[k]["gflops"] > 0
    assert all(rows[k]["weight_bytes"] is None for k in set(rows) - mm)   # gathers and experts read only part
    assert p["matmul_weight_bytes"] == sum(rows[k]["weight_bytes"] for k in mm)
    assert main(["bench", str(art), "--prefill", "16", "--decode-steps", "4", "--reps", "1", "--profile",
                 "--json"]) == 0
    pre = json.loads(capsys.readouterr().out)["profile_prefill"]
    chunk = json.loads((art / "manifest.json").read_text())["limits"]["prefill_chunk"]
    assert pre["entry"] == "prefill" and pre["rows_per_call"] == min(16, chunk)
    n = pre["rows_per_call"]
    rv = plan.get("row_variants", {}).get("prefill")          # a short prefill takes the batched-decode matmuls
    swap = rv["kernels"] if rv and n <= rv["max_rows"] else {}
    tile = rv["rows"] if swap else plan["row_tile"]["prefill"]
    rows_of = lambda spec: spec if isinstance(spec, int) else {"n": n, "np": -(-n // tile) * tile}[spec]  # noqa: E731
    want: dict = {}
    for L in plan["entries"]["prefill"]:
        if L.get("flops_per_row"):
            k = swap.get(L["kernel"], L["kernel"])
            want[k] = want.get(k, 0) + L["flops_per_row"] * rows_of(L["args"][0][2])
    assert want and {r["kernel"]: r["flops"] for r in pre["kernels"] if r["flops"]} == want
    assert pre["matmul_gflops"] > 0
    # each dense matmul against its instruction family's peak, measured here by the artifact's peak kernel
    assert set(plan["peaks"]) == set(plan["arith"].values()) == {"f32"} and pre["peaks_gops"]["f32"] > 0
    mm_rows = [r for r in pre["kernels"] if r["flops"]]
    assert all(r["family"] == "f32" and r["of_peak"] == r["gflops"] / pre["peaks_gops"]["f32"] for r in mm_rows)
    assert plan["read_peak"]["kernel"] in json.loads((art / "manifest.json").read_text())["kernels"]
    assert pre["read_gbs"] > 0 and all(r["of_bandwidth"] == r["gbs"] / pre["read_gbs"] for r in mm_rows)
    assert main(["bench", str(art), "--prefill", "16", "--decode-steps", "4", "--reps", "1", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "decode of 1 row(s): " in out and f"over {len(launches)} launches" in out and "GB/s" in out
    assert "prefill of " in out and "GOP/s" in out and "peaks measured here (all threads): f32" in out
    # and each decode matmul's read rate against the memory bandwidth, measured by the artifact's read-peak kernel
    assert "memory read " in out and "of bw" in out


def test_compile_refuses_config_only(tmp_path, capsys):
    main(["import", "lfm2-tiny", "-o", str(tmp_path / "c.lfm")])
    assert main(["compile", str(tmp_path / "c.lfm"), "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "no weights" in capsys.readouterr().err
    assert main(["compile", "lfm2-tiny", "--target", "vax", "-o", str(tmp_path / "y"), "-q"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_bench_profile_batch_uses_the_batched_tiles(served_artifact, capsys):
    """--profile-batch N profiles a decode step of N sequences: the plan's taller row variants replace the 1-row
    GEMVs (every launch still counted once); N beyond the artifact's batch is a clear error."""
    plan = json.loads((served_artifact / "manifest.json").read_text())["plan"]
    twins = plan["row_variants"]["decode"]["kernels"]
    capsys.readouterr()
    assert main(["bench", str(served_artifact), "--prefill", "8", "--decode-steps", "2", "--reps", "1", "--profile",
                 "--profile-batch", "3", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["profile"]
    names = {r["kernel"] for r in p["kernels"]}
    assert p["rows_per_call"] == 3 and p["launches"] == len(plan["entries"]["decode"])
    assert set(twins.values()) <= names and not set(twins) & names
    assert main(["bench", str(served_artifact), "--prefill", "8", "--decode-steps", "2", "--reps", "1", "--profile",
                 "--profile-batch", "9"]) == 2
    assert "--profile-batch 9" in capsys.readouterr().err


def test_run_speculate_gives_the_plain_tokens(served_artifact, capsys):
    """lfmc run --speculate ngram: the same greedy tokens as without, and the speculation counts in --json."""
    args = ["run", str(served_artifact), "--tokens", "5,6,7,8,5,6,7", "--max-new-tokens", "20", "--ignore-eos",
            "--json"]
    capsys.readouterr()
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(args + ["--speculate", "ngram", "--draft-k", "3"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["tokens"] == plain["tokens"] and spec["speculation"]["verify_calls"] + \
        spec["speculation"]["decode_calls"] >= 1
    assert main(args + ["--draft", str(served_artifact), "--draft-k", "3"]) == 0   # the model drafting for itself
    spec = json.loads(capsys.readouterr().out)
    assert spec["tokens"] == plain["tokens"] and spec["speculation"]["accepted"] == spec["speculation"]["drafted"] > 0
    assert main(args + ["--draft", str(served_artifact), "--speculate", "ngram"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(args + ["--draft", "/no/such/draft"]) == 2
    assert "--draft /no/such/draft: no such artifact directory" in capsys.readouterr().err


def test_bench_speculation(served_artifact, capsys):
    """lfmc bench --speculate / --draft: verify costs for each k, speculative against plain decoding, acceptance
    and projections; the model drafting for itself accepts every draft."""
    base = ["bench", str(served_artifact), "--prefill", "8", "--decode-steps", "12", "--reps", "1", "--json"]
    capsys.readouterr()
    assert main(base + ["--draft", str(served_artifact), "--draft-k", "3", "--spec-prompt", "abcabcabc"]) == 0
    sp = json.loads(capsys.readouterr().out)["speculation"]
    assert sorted(sp["cost"]["ratio"]) == ["1", "2", "3", "4"] and all(r > 0 for r in sp["cost"]["ratio"].values())
    m = sp["measured"]
    assert m["acceptance"] == 1.0 and m["totals"]["drafted"] > 0 and m["plain_tok_s"] > 0 and sp["draft_step"] > 0
    assert 0 < sp["projected"]["0.5"]["speedup"] < sp["projected"]["0.8"]["speedup"]
    assert main(base[:-1] + ["--speculate", "ngram"]) == 0
    out = capsys.readouterr().out
    assert "speculation (ngram, prompt: a random 64-token passage" in out and "projected at acceptance" in out
