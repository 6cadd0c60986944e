"""LFM2-VL against transformers' own Lfm2VlForConditionalGeneration on a tiny random config: the image-token
embeddings within 1e-4 relative, and greedy decoding token-exact, for images that are upscaled (small),
resized (mid-size), tiled with a thumbnail (large) and tiled 1 x N (very wide), and for two images in one prompt;
on the IR interpreter, the compiled host artifact and the opencl driver over PoCL (Adreno schedules)."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.ir.interp import Interpreter
from lfmc.mixers import merge_order, resize_weights
from lfmc.runtime.vision import ImageProcessor

from tests.helpers import has_opencl
from tests.vision.helpers import SIZES, TINY, hf_inputs, image, tiny_pair

IMG = TINY["image_token_id"]
STEPS = 12


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=3)


def _encode_ref(vis: Interpreter, pieces, grid: int = 4) -> np.ndarray:
    return np.concatenate([vis.evaluate({"patches": p.patches, "pos_weights": resize_weights(p.height, p.width, grid),
                                         "order": merge_order(p.height, p.width, 2)}) for p in pieces])


def _prompt(proc: ImageProcessor, imgs) -> list[int]:
    ids = [1, 5, 6]
    for pi in imgs:
        ids += proc.image_token_ids(pi, IMG) + [7, 8]
    return ids + [9]


def _hf_greedy(hf, ids, pieces, max_patches: int) -> tuple[np.ndarray, list[int]]:
    import torch

    inp = hf_inputs(pieces, max_patches)
    with torch.no_grad():
        feats = torch.cat(hf.model.get_image_features(**inp).pooler_output).numpy()
        out = hf.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          **inp, max_new_tokens=STEPS, do_sample=False)[0, len(ids):].tolist()
    return feats, out


def _interp_greedy(dec: Interpreter, ids, rows) -> list[int]:
    img = np.zeros((len(ids), rows.shape[1]), np.float32)
    img[np.asarray(ids) == IMG] = rows
    st = dec.new_state()
    lg, toks = dec.run(ids, st, img), []
    for _ in range(STEPS):
        toks.append(int(np.argmax(lg[-1])))
        lg = dec.run([toks[-1]], st)
    return toks


@pytest.mark.parametrize("size", SIZES + [(SIZES[0], SIZES[2])], ids=lambda s: "x".join(map(str, s))
                         if isinstance(s[0], int) else "two-images")
def test_interpreter_matches_transformers(pair, size):
    m, hf = pair
    proc = ImageProcessor({})
    sizes = [size] if isinstance(size[0], int) else list(size)
    imgs = [proc.process(image(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]
    pieces = [p for pi in imgs for p in pi.pieces]
    ids = _prompt(proc, imgs)
    rows = _encode_ref(Interpreter(m.vision, m.weights_of(m.vision)), pieces)
    assert rows.shape[0] == sum(pi.num_tokens for pi in imgs) == ids.count(IMG)
    feats, want = _hf_greedy(hf, ids, pieces, proc.max_num_patches)
    assert np.abs(rows - feats).max() <= 1e-4 * np.abs(feats).max()
    got = _interp_greedy(Interpreter(m.graph, m.weights_of(m.graph)), ids, rows)
    assert got == want and len(set(got)) >= 5, (got, want)


def test_the_image_matters(pair):
    """Two different images give different greedy continuations: the comparisons above can fail."""
    m, _ = pair
    proc = ImageProcessor({})
    vis, dec = Interpreter(m.vision, m.weights_of(m.vision)), Interpreter(m.graph, m.weights_of(m.graph))
    outs = []
    for seed in (0, 1):
        pi = proc.process(image(300, 500, seed=seed))
        outs.append(_interp_greedy(dec, _prompt(proc, [pi]), _encode_ref(vis, pi.pieces)))
    assert outs[0] != outs[1]


TARGETS = {"host": "host", "opencl": "snapdragon-8gen3"}


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_compiled_matches_transformers(pair, kind, tmp_path):
    """The artifact's vision entry and decoder: Engine.generate with images == transformers' greedy tokens."""
    from lfmc.compile import compile_model
    from lfmc.runtime import Engine

    if kind == "opencl":
        pytest.importorskip("pyopencl")
        if not has_opencl():
            pytest.skip("no OpenCL device (apt install pocl-opencl-icd)")
    m, hf = pair
    art = compile_model(m, tmp_path / kind, target=TARGETS[kind], max_batch=2, max_context=4096, prefill_chunk=64)
    eng = Engine(art)
    proc = eng.processor()
    vis = Interpreter(m.vision, m.weights_of(m.vision))
    cases = [[(90, 120)], [(900, 1200)]] if kind == "host" else [[(300, 500)]]
    if kind == "host":
        cases.append([(90, 120), (300, 2400)])
    for sizes in cases:
        pics = [image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
        imgs = [proc.process(p) for p in pics]
        pieces = [p for pi in imgs for p in pi.pieces]
        got_rows = np.concatenate([eng.encode_image(p.patches, p.height, p.width) for p in pieces])
        ref = _encode_ref(vis, pieces)
        assert np.abs(got_rows - ref).max() <= 1e-4 * np.abs(ref).max(), sizes
        ids = _prompt(proc, imgs)
        _, want = _hf_greedy(hf, ids, pieces, proc.max_num_patches)
        # the placeholders of the prompt become each image's tokens inside Engine.generate
        marked = [1, 5, 6] + sum(([IMG, 7, 8] for _ in pics), []) + [9]
        got = eng.generate(marked, max_new_tokens=STEPS, stop=[], images=pics).tokens
        assert got == want and len(set(got)) >= 5, (sizes, got, want)


def test_hf_checkpoint_directory(pair, tmp_path):
    """save_pretrained's directory (safetensors, config.json) plus a processor config imports without torch
    into the same graphs and weights; the processor settings travel into the artifact."""
    import json

    from lfmc.frontend import import_hf_dir

    m, hf = pair
    hf.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"max_image_tokens": 128, "use_thumbnail": False}))
    got = import_hf_dir(tmp_path)
    assert got.vision is not None and sorted(got.weights) == sorted(m.weights)
    assert all(np.array_equal(got.weights[k], m.weights[k]) for k in m.weights)
    assert got.provenance["processor"] == {"max_image_tokens": 128, "use_thumbnail": False}
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(Exception, match="safetensors"):
        import_hf_dir(tmp_path)


@pytest.mark.parametrize("preset", ["lfm2-vl-tiny", "lfm3-vl-tiny"])
def test_encoder_in_16_bits(preset, tmp_path):
    """--dtype f16 stores the encoder's projections in f16 too (biases, norms, tables stay f32); the compiled
    encoder equals the interpreter on the same cast weights."""
    import json

    from lfmc.compile import compile_model
    from lfmc.frontend import import_preset
    from lfmc.passes import run_pipeline
    from lfmc.runtime import Engine

    m = import_preset(preset, weights=True, seed=7, std=0.25)
    art = compile_model(m, tmp_path / "a", target="host", dtype="f16", max_context=2048, prefill_chunk=64)
    params = json.loads((art / "manifest.json").read_text())["plan"]["params"]
    assert any(k.startswith("w.model.vision_tower") and v["dtype"] == "float16" for k, v in params.items())
    cast = run_pipeline(m, ["cast-weights"], {"dtype": "f16"})
    assert cast.vision.nodes[0].params["weight"].type.dtype == "f16"
    eng = Engine(art)
    vis = Interpreter(cast.vision, cast.weights_of(cast.vision))
    p = eng.processor().process(image(300, 500)).pieces[0]
    got = eng.encode_image(p.patches, p.height, p.width)
    feed = ({"patches": p.patches, "grid": np.array([p.height, p.width], np.int32)} if preset.startswith("lfm3") else
            {"patches": p.patches, "pos_weights": resize_weights(p.height, p.width, 4),
             "order": merge_order(p.height, p.width, 2)})
    ref = vis.evaluate(feed)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_bf16_checkpoint_and_image_profile(pair, tmp_path):
    """Checkpoints ship bf16 weights (numpy has none): they import widened exactly; and Engine.profile_image
    times every kernel of the vision entry."""
    import torch

    from lfmc.compile import compile_model
    from lfmc.frontend import import_hf_dir
    from lfmc.runtime import Engine

    m, hf = pair
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "ck")
    hf.to(torch.float32)
    got = import_hf_dir(tmp_path / "ck")
    for k, v in m.weights.items():
        want = torch.from_numpy(v).to(torch.bfloat16).float().numpy()
        assert got.weights[k].dtype == np.float32 and np.array_equal(got.weights[k], want), k
    eng = Engine(compile_model(m, tmp_path / "a", target="host", max_context=2048, prefill_chunk=64))
    p = eng.processor().process(image(300, 500)).pieces[0]
    prof = eng.profile_image(p.patches, p.height, p.width)
    names = {L["kernel"] for L in eng.plan["entries"]["vision"]}
    assert set(prof) == names and all(t > 0 for t in prof.values())
