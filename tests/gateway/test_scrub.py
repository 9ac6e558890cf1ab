"""The one scrubber: secrets out of everything; paths and tracebacks out of error text, not out of answers."""

from __future__ import annotations

import json

from gateway.api.scrub import Scrubber, env_secrets

KEY = "sk-proj-abcdefghijklmnop123456"
TRACE = (
    "Invalid response object Traceback (most recent call last):\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/litellm/x.py", line 691, in convert\n'
    "    raise ValueError(x)\nValueError: bad"
)


def test_error_text_loses_tracebacks_paths_and_keys():
    scrubber = Scrubber([KEY])
    cleaned = scrubber.message(f"{TRACE} key={KEY} at /home/alice/app/main.py and C:\\Users\\bob\\a.txt")
    for leak in ("Traceback", "site-packages", "/home/alice", "C:\\Users", KEY, 'File "'):
        assert leak not in cleaned
    assert cleaned.startswith("Invalid response object")
    # The gateway's own hints keep their URL paths.
    hint = "Unknown path; see /v1/chat/completions."
    assert scrubber.message(hint) == hint


def test_answers_keep_their_paths_but_never_a_known_key():
    scrubber = Scrubber([KEY])
    answer = json.dumps({"choices": [{"message": {"content": f"ls /home/alice/docs; echo {KEY}"}}]}).encode()
    out = json.loads(scrubber.outgoing(answer))
    assert out["choices"][0]["message"]["content"] == "ls /home/alice/docs; echo ***"


def test_error_bodies_and_sse_error_events_are_scrubbed_whole():
    scrubber = Scrubber()
    body = json.dumps({"error": {"message": TRACE, "type": "upstream_error", "code": "x"}}).encode()
    assert "Traceback" not in json.loads(scrubber.outgoing(body, error=True))["error"]["message"]
    event = b"data: " + body + b"\n\n"
    cleaned = scrubber.outgoing(event)
    assert cleaned.startswith(b"data: ") and cleaned.endswith(b"\n\n") and b"Traceback" not in cleaned


def test_key_like_environment_variables_are_secrets():
    found = env_secrets({"OPENAI_API_KEY": "sk-env-secret-99999", "HOME": "/root", "X_TOKEN": "no-key"})
    assert found == ["sk-env-secret-99999"]
