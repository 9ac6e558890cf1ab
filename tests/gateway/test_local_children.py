"""Internalized models served out of process: one supervised llama.cpp server per model (the default).

Real `python -m llama_cpp.server` children on SmolLM2-135M; a file that crashes llama.cpp, a child killed
with SIGKILL: the gateway's process never goes down, requests get a LocalError (the router sends them
upstream) until the child serves again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import pytest

from gateway.local.backend import LocalError
from gateway.local.children import LlamaServerPool
from gateway.upstream.base_model import smollm2_gguf_path

ASK = [{"role": "user", "content": "List the files in the current directory with bash."}]
GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name in ("a", "b"):
        paths[name] = str(folder / f"{name}.gguf")
        shutil.copyfile(smollm2_gguf_path(), paths[name])
    broken = folder / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))  # right magic, garbage after: llama.cpp cannot load it
    paths["broken"] = str(broken)
    return paths


def _pool(tmp_path, **overrides) -> LlamaServerPool:
    settings = {"max_loaded": 2, "queue_size": 4, "timeout_s": 60.0, "n_ctx": 512, "n_threads": 2}
    return LlamaServerPool(**{**settings, "log_path": tmp_path / "local-llama.log", **overrides})


async def _stream_text(pool, model_id, path):
    pieces, result = [], None
    async for delta in pool.chat_stream(model_id, path, ASK, GREEDY):
        pieces.append(delta.text)
        result = delta.result or result
    return "".join(pieces), result


def test_a_child_serves_json_and_streams_with_exact_counts(ggufs, tmp_path):
    async def run():
        pool = _pool(tmp_path)
        try:
            await pool.prepare("m-a", ggufs["a"])
            answer = await pool.chat("m-a", ggufs["a"], ASK, GREEDY)
            text, streamed = await _stream_text(pool, "m-a", ggufs["a"])
            return answer, text, streamed, pool.pid("m-a")
        finally:
            await pool.close()

    answer, text, streamed, pid = asyncio.run(run())
    assert pid != os.getpid() and answer.text.strip() and text == answer.text
    # The server's JSON usage and the tokenizer's count of the stream agree exactly.
    assert streamed.prompt_tokens == answer.prompt_tokens
    assert streamed.completion_tokens == answer.completion_tokens


def test_a_gguf_that_crashes_llama_cpp_is_a_local_error_not_a_dead_gateway(ggufs, tmp_path):
    async def run():
        pool = _pool(tmp_path)
        try:
            with pytest.raises(LocalError, match="llama.cpp server"):
                await pool.prepare("m-broken", ggufs["broken"])
            started = time.monotonic()
            with pytest.raises(LocalError):  # the same file fails fast until it changes
                await pool.prepare("m-broken", ggufs["broken"])
            assert time.monotonic() - started < 1
            with pytest.raises(LocalError):
                await pool.chat("m-broken", ggufs["broken"], ASK, GREEDY)
            await pool.prepare("m-a", ggufs["a"])  # other models are unaffected
            return (await pool.chat("m-a", ggufs["a"], ASK, GREEDY)).text
        finally:
            await pool.close()

    assert asyncio.run(run()).strip()


def test_a_killed_child_is_restarted_and_its_requests_fail_fast_meanwhile(ggufs, tmp_path):
    async def run():
        pool = _pool(tmp_path)
        try:
            await pool.prepare("m-a", ggufs["a"])
            first_pid = pool.pid("m-a")
            os.kill(first_pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            with pytest.raises(LocalError, match="restarting"):
                await pool.chat("m-a", ggufs["a"], ASK, GREEDY)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    answer = await pool.chat("m-a", ggufs["a"], ASK, GREEDY)
                    return first_pid, pool.pid("m-a"), answer.text, pool.counters["crashes"]
                except LocalError:
                    await asyncio.sleep(0.2)
            raise AssertionError("the child was not restarted")
        finally:
            await pool.close()

    first_pid, second_pid, text, crashes = asyncio.run(run())
    assert second_pid != first_pid and text.strip() and crashes == 1


def test_least_recently_used_child_is_stopped_past_the_cap(ggufs, tmp_path):
    async def run():
        pool = _pool(tmp_path, max_loaded=1)
        try:
            await pool.prepare("m-a", ggufs["a"])
            pid_a = pool.pid("m-a")
            pool._children["m-a"].protected_until = 0  # its grace period over
            await pool.prepare("m-b", ggufs["b"])
            return pid_a, sorted(pool.stats()["children"])
        finally:
            await pool.close()

    pid_a, running = asyncio.run(run())
    assert running == ["m-b"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid_a, 0)
