"""The IR text form: print -> parse -> print is identical for every op; bad text is a clear ParseError."""
from __future__ import annotations

import pytest

from lfmc.frontend import import_preset
from lfmc.frontend.config import graph_from_config
from lfmc.frontend.presets import PRESETS, preset
from lfmc.ir import ParseError, TensorType, parse_graph, print_graph, verify
from lfmc.ir.ops import SCHEMAS
from lfmc.ir.text import format_value


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip(name):
    for g in import_preset(name).graphs():          # a VL preset: the decoder and the vision graph
        text = print_graph(verify(g))
        assert print_graph(verify(parse_graph(text))) == text


def test_every_op_is_covered_by_the_round_trips():
    ops = set()
    for name in PRESETS:
        ops |= {n.op for g in import_preset(name).graphs() for n in g.nodes}
    assert ops == set(SCHEMAS)
    # `linear` is only produced for untied biased heads; cover it by hand
    g = graph_from_config(preset("lfm2-tiny")["config"], "t")
    head = g.nodes[-1]
    head.op = "linear"
    text = print_graph(verify(g))
    assert "= linear(" in text and print_graph(parse_graph(text)) == text


@pytest.mark.parametrize("value", [0, -3, 1.5, 1e-05, 1e6, 1e-300, float("inf"), True, False, "sig moid \"q\"",
                                   [1, 2.5, "x"], {"b": 1, "a": [True]}, TensorType("f32", ("ctx", 2, 16)), [], {}])
def test_values_round_trip(value):
    g = graph_from_config(preset("lfm2-tiny")["config"], "t")
    g.attrs = {"v": value}
    text = print_graph(g)
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    assert g2.attrs["v"] == value if not isinstance(value, dict) else g2.attrs["v"] == dict(value)
    assert format_value(g2.attrs["v"]) == format_value(value)


def _text():
    return print_graph(graph_from_config(preset("lfm2-tiny")["config"], "t"))


def test_truncated_text_names_the_place():
    text = _text()
    for cut in (10, len(text) // 3, len(text) - 5):
        with pytest.raises(ParseError) as e:
            parse_graph(text[:cut], source="model.lfmir")
        assert "model.lfmir:" in str(e.value)


def test_parse_errors_name_line_and_column():
    text = _text().splitlines()
    text[4] = text[4].replace("f32[T, 64]", "f99[T, 64]", 1)
    with pytest.raises(ParseError, match=r"<ir>:5:\d+: .*"):
        parse_graph("\n".join(text))
    with pytest.raises(ParseError, match="unexpected character"):
        parse_graph(_text().replace("= add(", "= add$("))
    with pytest.raises(ParseError, match="duplicate key"):
        parse_graph(_text().replace("attrs {eps = 1e-05}", "attrs {eps = 1e-05, eps = 1.0}", 1))
    with pytest.raises(ParseError, match="after the end"):
        parse_graph(_text() + "graph")
    with pytest.raises(ParseError):
        parse_graph("")
