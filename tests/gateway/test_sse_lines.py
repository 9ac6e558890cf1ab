"""The direct transport's SSE reader: lines reassembled across network reads, one read's lines together;
each event read as JSON exactly as Python's json module reads it."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.direct import MAX_EVENT_BYTES, _json_object, _line_batches
from gateway.upstream.errors import UpstreamError


class Reads:
    """An aiohttp response whose body arrives in the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.content = self
        self.pieces = list(pieces)

    async def readany(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def batches(pieces: list[bytes]) -> list[list[bytes]]:
    async def collect() -> list[list[bytes]]:
        return [batch async for batch in _line_batches(Reads(pieces))]

    return asyncio.run(collect())


def test_the_lines_of_one_read_come_together_and_a_split_line_is_joined():
    got = batches([b'data: {"a":1}\n\ndata: {"b"', b":2}\n\ndata: [DONE]\n\n"])
    assert got == [[b'data: {"a":1}\n', b"\n"], [b'data: {"b":2}\n', b"\n", b"data: [DONE]\n", b"\n"]]


def test_a_last_line_without_newline_is_kept():
    assert batches([b"data: x\n", b"data: y"]) == [[b"data: x\n"], [b"data: y"]]


def test_an_event_longer_than_the_limit_is_an_error():
    with pytest.raises(UpstreamError) as raised:
        batches([b"data: " + b"x" * (MAX_EVENT_BYTES + 1)])
    assert raised.value.code == "upstream_too_large"


@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_however_the_body_is_cut_the_lines_are_the_same(body, cuts):
    points = sorted({c for c in cuts if c <= len(body)})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    pieces = [p for p in pieces if p]  # an empty read means the end of the body
    lines = [line for batch in batches(pieces) for line in batch]
    assert b"".join(lines) == body
    assert all(line.endswith(b"\n") for line in lines[:-1])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, int) and abs(b) >= 2**63:
        return a == float(b)  # the one difference kept (gateway/upstream/direct.py: _loads)
    return type(a) is type(b) and a == b


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.booleans())
def test_an_event_reads_as_pythons_json_reads_it(event, ascii_only):
    """Fast reader or not: NaN, infinities and lone surrogates read as json.loads reads them (integers
    past 64 bits as floats of the same value)."""
    data = json.dumps(event, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert _same(_json_object(data, "a stream chunk"), json.loads(data))


@pytest.mark.parametrize("data", [b"[1, 2]", b"not json", b'{"a": ', b"\xff\xfe"])
def test_an_event_that_is_not_a_json_object_is_a_bad_reply(data):
    with pytest.raises(UpstreamError) as caught:
        _json_object(data, "a stream chunk")
    assert caught.value.status == 502 and caught.value.code == "upstream_bad_response"
