from __future__ import annotations

import re

import pytest

from internalizer.base import load_base
from internalizer.compress import Unit, compress_text, select_units, split_units

TEMPLATE = (
    "[system]\nTranslate the request into one bash command. Reply with the command only. Use standard tools, "
    "keep file names exactly as the user wrote them, and never add an explanation or a comment.\n"
    "[user]\nExamples:\n\n{{examples}}\n\nNow answer this request.\n\nInput: {{query}}\nOutput:"
)


def test_units_cover_text_and_protect_markers_and_headers():
    units = split_units(TEMPLATE)
    assert "".join(TEMPLATE[u.start : u.end] for u in units) == TEMPLATE
    protected = {TEMPLATE[u.start : u.end] for u in units if u.protected}
    assert {"{{examples}}", "{{query}}", "[system]", "[user]", "\n"} <= protected


def test_select_drops_lowest_scores_first_within_budget():
    units = [
        Unit(0, 1, False, 2, 5.0),
        Unit(1, 2, True, 1),
        Unit(2, 3, False, 2, 1.0),
        Unit(3, 4, False, 4, 3.0),
    ]
    # 9 tokens, 1 protected: rate 0.9 keeps <= 8.1 tokens, 0.75 <= 6.75, 0.25 only the protected one
    assert select_units(units, 0.9) == [True, True, False, True]
    assert select_units(units, 0.75) == [True, True, False, False]
    assert select_units(units, 0.25) == [False, True, False, False]
    assert select_units(units, 1.0) == [True] * 4


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.7])
def test_compression_respects_rate_and_keeps_structure(tiny_gguf, rate):
    base = load_base(tiny_gguf)
    result = compress_text(base.model, base.tokenizer, TEMPLATE, rate)
    assert rate - 0.2 <= result.kept_ratio <= rate + 0.05  # re-tokenizing joined words may shift a little
    for marker in ("{{examples}}", "{{query}}", "[system]", "[user]"):
        assert marker in result.text
    assert re.search(r"^\[user\]$", result.text, re.MULTILINE)
    assert len(result.text) < len(TEMPLATE)


def test_rate_one_is_identity(tiny_gguf):
    base = load_base(tiny_gguf)
    assert compress_text(base.model, base.tokenizer, TEMPLATE, 1.0).text == TEMPLATE
