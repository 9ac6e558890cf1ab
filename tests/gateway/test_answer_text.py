"""The answer a row logs: text, or the tool calls (whole, or put back together from stream deltas)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.log.row_text import ToolCallDeltas, answer_text

calls_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.text(min_size=1, max_size=8),
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.text(min_size=1, max_size=8), "arguments": st.text(max_size=40)}
            ),
        }
    ),
    min_size=1,
    max_size=3,
)


@given(calls_strategy, st.data())
def test_streamed_tool_calls_reassemble_to_the_whole_calls(calls, data):
    deltas = []
    for index, call in enumerate(calls):
        arguments = call["function"]["arguments"]
        cuts = sorted(data.draw(st.lists(st.integers(0, len(arguments)), max_size=4)))
        pieces = [arguments[a:b] for a, b in zip([0, *cuts], [*cuts, len(arguments)], strict=True)]
        first = {"index": index, "id": call["id"], "type": "function"}
        deltas.append([{**first, "function": {"name": call["function"]["name"], "arguments": pieces[0]}}])
        deltas += [[{"index": index, "function": {"arguments": piece}}] for piece in pieces[1:]]
    assembled = ToolCallDeltas()
    for delta in deltas:
        assembled.add(delta)
    assert json.loads(answer_text({"content": "", **assembled.as_message()})) == calls


def test_text_wins_and_odd_messages_log_nothing():
    assert answer_text({"content": "ls -la", "tool_calls": [{"id": "x"}]}) == "ls -la"
    assert answer_text({"content": None}) is None
    assert answer_text(None) is None and answer_text("text") is None
    assert answer_text({"content": ""}) == ""
    odd = ToolCallDeltas()
    odd.add("not a list")
    odd.add([None, {"index": "zero", "function": "nope"}])
    assert odd.as_message() == {"tool_calls": [{"function": {"name": "", "arguments": ""}}]}
