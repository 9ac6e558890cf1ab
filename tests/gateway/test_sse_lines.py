"""The direct transport's SSE reader: lines reassembled across network reads, one read's lines together."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.direct import MAX_EVENT_BYTES, _line_batches
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
