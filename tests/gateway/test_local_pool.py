"""Local serving with real llama.cpp on SmolLM2-135M (two copies of its GGUF = two "models").

Short greedy answers keep each test to seconds on two busy cores.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.local.backend import LocalError, LocalOverloaded, LocalTimeout, unsupported_params
from gateway.local.factory import make_local_backend
from gateway.local.pool import LlamaPool
from gateway.local.remote import RemoteLocalBackend
from gateway.settings import Settings
from gateway.upstream.base_model import smollm2_gguf_path

ASK = [{"role": "user", "content": "List the files in the current directory with bash."}]
GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name in ("a", "b", "c"):
        paths[name] = str(folder / f"{name}.gguf")
        shutil.copyfile(smollm2_gguf_path(), paths[name])
    return paths


async def _settled(pool: LlamaPool) -> dict:
    """The pool's stats once every worker has handed its finished request back (a loop turn or two)."""
    for _ in range(200):
        stats = pool.stats()
        if all(m["pending"] == 0 for m in stats["loaded"].values()):
            break
        await asyncio.sleep(0.01)
    return stats


def _pool(**overrides) -> LlamaPool:
    return LlamaPool(
        **{"max_loaded": 2, "queue_size": 4, "timeout_s": 60.0, "n_ctx": 512, "n_threads": 2, **overrides}
    )


def test_chat_matches_llama_cpp_and_streams_the_same_text(ggufs):
    from llama_cpp import Llama

    direct = Llama(model_path=ggufs["a"], n_ctx=512, n_threads=2, verbose=False).create_chat_completion(
        messages=ASK, temperature=0, top_k=0, min_p=0, repeat_penalty=1.0, max_tokens=6
    )

    async def run():
        pool = _pool()
        try:
            result = await pool.chat("a", ggufs["a"], ASK, GREEDY)
            deltas = [d async for d in pool.chat_stream("a", ggufs["a"], ASK, GREEDY)]
            return result, deltas
        finally:
            await pool.close()

    result, deltas = asyncio.run(run())
    assert result.text == direct["choices"][0]["message"]["content"]
    assert result.finish_reason == direct["choices"][0]["finish_reason"] == "length"
    assert (result.prompt_tokens, result.completion_tokens) == (
        direct["usage"]["prompt_tokens"],
        direct["usage"]["completion_tokens"],
    )
    assert 0 < result.compute_s < 30
    assert "".join(d.text for d in deltas) == result.text
    assert [d.result is not None for d in deltas] == [False] * (len(deltas) - 1) + [True]
    assert deltas[-1].result.text == result.text and deltas[-1].text == ""


def test_least_recently_used_model_is_evicted(ggufs):
    async def run():
        pool = _pool(max_loaded=2)
        try:
            for model in ("a", "b", "a", "c"):  # a is used again after b: b is the least recently used
                await pool.chat(model, ggufs[model], ASK, {"temperature": 0, "max_tokens": 1})
            after_c = pool.loaded()
            await pool.chat("b", ggufs["b"], ASK, {"temperature": 0, "max_tokens": 1})
            return after_c, pool.loaded(), dict(pool.counters)
        finally:
            await pool.close()

    after_c, after_b, counters = asyncio.run(run())
    assert after_c == ["a", "c"]
    assert after_b == ["c", "b"]
    assert counters["loads"] == 4 and counters["evictions"] == 2


def test_memory_budget_keeps_one_model_loaded(ggufs):
    size = Path(ggufs["a"]).stat().st_size

    async def run():
        pool = _pool(max_loaded=10, max_loaded_bytes=int(size * 1.5))
        try:
            await pool.chat("a", ggufs["a"], ASK, {"temperature": 0, "max_tokens": 1})
            await pool.chat("b", ggufs["b"], ASK, {"temperature": 0, "max_tokens": 1})
            return pool.loaded()
        finally:
            await pool.close()

    assert asyncio.run(run()) == ["b"]


def test_full_queue_is_refused_and_concurrent_loads_are_shared(ggufs):
    async def run():
        pool = _pool(queue_size=1)
        try:
            outcomes = await asyncio.gather(
                *(pool.chat("a", ggufs["a"], ASK, GREEDY) for _ in range(4)), return_exceptions=True
            )
            return outcomes, dict(pool.counters), await _settled(pool)
        finally:
            await pool.close()

    outcomes, counters, stats = asyncio.run(run())
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, LocalOverloaded)]
    assert len(answered) == 2 and len(refused) == 2  # one running + one waiting
    assert all(isinstance(r, LocalError) for r in refused)  # the router catches one type
    assert counters["loads"] == 1  # four requests for a cold model: one load
    assert stats["loaded"]["a"]["pending"] == 0


def test_timeout_stops_generation_and_the_model_keeps_serving(ggufs):
    count = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]

    async def run():
        pool = _pool(timeout_s=1.0)
        try:
            await pool.prepare("a", ggufs["a"])
            started = time.perf_counter()
            with pytest.raises(LocalTimeout, match="did not answer within 1s"):
                await pool.chat("a", ggufs["a"], count, {"temperature": 0, "max_tokens": 400})
            waited = time.perf_counter() - started
            pool.timeout_s = 60.0
            after = await pool.chat("a", ggufs["a"], ASK, GREEDY)  # queued behind the cancelled one
            return waited, after, await _settled(pool)
        finally:
            await pool.close()

    waited, after, stats = asyncio.run(run())
    assert 1.0 <= waited < 2.5
    assert after.text and stats["timeouts"] == 1 and stats["loaded"]["a"]["pending"] == 0


def test_swap_under_concurrent_traffic_has_zero_failures(ggufs):
    """Three clients keep sending while the route moves from a to b: b is loaded before it is routed to,
    a finishes its in-flight requests and is unloaded, and no request fails."""

    async def run():
        pool = _pool(max_loaded=1, queue_size=32)
        active = {"model": "a"}
        served: list[tuple[str, str]] = []  # (model routed to, model that answered)
        try:
            await pool.prepare("a", ggufs["a"])

            async def client():
                while sum(routed == "b" for routed, _ in served) < 6:
                    model = active["model"]
                    result = await pool.chat(model, ggufs[model], ASK, {"temperature": 0, "max_tokens": 2})
                    served.append((model, result.model_id))

            async def swap():
                while len(served) < 3:  # traffic on a first
                    await asyncio.sleep(0.01)
                await pool.prepare("b", ggufs["b"])
                loaded_before_switch = pool.loaded()
                active["model"] = "b"  # the atomic switch: one reference
                await pool.release("a")
                return loaded_before_switch

            *clients, loaded_before_switch = await asyncio.gather(
                client(), client(), client(), swap(), return_exceptions=True
            )
            return clients, loaded_before_switch, served, pool.loaded(), dict(pool.counters)
        finally:
            await pool.close()

    clients, loaded_before_switch, served, loaded, counters = asyncio.run(run())
    assert clients == [None, None, None]  # no client saw an exception
    assert all(routed == answered for routed, answered in served)
    assert sum(answered == "a" for _, answered in served) >= 3
    assert sum(answered == "b" for _, answered in served) >= 6
    assert loaded_before_switch == ["a", "b"]  # both loaded while a still had traffic
    assert loaded == ["b"] and counters["loads"] == 2  # a unloaded once idle; b loaded once, before routing


def test_corrupt_or_missing_gguf_is_a_local_error_and_harms_nothing(ggufs, tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(Path(ggufs["b"]).read_bytes()[:5_000_000])
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("this is not a model")

    async def run():
        pool = _pool()
        try:
            before = await pool.chat("a", ggufs["a"], ASK, GREEDY)
            errors = []
            for name, path in [
                ("g", garbage),
                ("t", truncated),
                ("x", not_gguf),
                ("m", tmp_path / "missing.gguf"),
            ]:
                with pytest.raises(LocalError) as info:
                    await pool.chat(name, str(path), ASK, GREEDY)
                errors.append(str(info.value))
            load_errors = pool.counters["load_errors"]
            with pytest.raises(LocalError):  # a known-bad file fails fast, without another load attempt
                await pool.chat("g", str(garbage), ASK, GREEDY)
            after = await pool.chat("a", ggufs["a"], ASK, GREEDY)
            return before, after, errors, load_errors, pool.counters["load_errors"], pool.loaded()
        finally:
            await pool.close()

    before, after, errors, load_errors, load_errors_again, loaded = asyncio.run(run())
    assert after.text == before.text
    assert loaded == ["a"]
    assert "cannot load" in errors[0] and "not a GGUF file" in errors[2] and "cannot read" in errors[3]
    assert load_errors == load_errors_again == 3


def test_blank_answer_is_an_error_not_output(ggufs):
    async def run():
        pool = _pool()
        try:
            # Greedy SmolLM2 opens this answer with "The current directory": stopping at "The" leaves nothing.
            return [d async for d in pool.chat_stream("a", ggufs["a"], ASK, {**GREEDY, "stop": ["The"]})]
        finally:
            await pool.close()

    with pytest.raises(LocalError, match="returned no text"):
        asyncio.run(run())


def test_unsupported_params_are_listed_for_the_router():
    assert (
        unsupported_params({"model": "m", "temperature": 0.2, "max_tokens": 9, "stream": True, "n": 1}) == []
    )
    assert unsupported_params(
        {"tools": [{}], "response_format": {"type": "json_object"}, "n": 3, "logprobs": True, "top_k": 5}
    ) == ["logprobs", "n", "response_format", "tools", "top_k"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(ggufs):
    """A real llama.cpp OpenAI-compatible server (llama-cpp-python's) serving model `a`."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", ggufs["a"], "--model_alias", "a",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("llama_cpp.server did not start")
    yield base
    process.terminate()
    process.wait(timeout=20)


def test_remote_backend_is_configuration_not_code(ggufs, llama_server):
    settings = Settings(local_backend="remote", local_api_base=llama_server, local_timeout_s=60)

    async def run():
        remote = make_local_backend(settings)
        pool = _pool()
        try:
            assert isinstance(remote, RemoteLocalBackend)
            await remote.prepare("a", ggufs["a"])
            with pytest.raises(LocalError, match="does not serve"):
                await remote.prepare("zzz", "")
            short = {"temperature": 0, "max_tokens": 3}
            local = await pool.chat("a", ggufs["a"], ASK, short)
            answer = await remote.chat("a", ggufs["a"], ASK, short)
            deltas = [d async for d in remote.chat_stream("a", ggufs["a"], ASK, short)]
            return local, answer, deltas
        finally:
            await remote.close()
            await pool.close()

    local, answer, deltas = asyncio.run(run())
    assert answer.text == local.text  # the same model, greedy, in-process or behind HTTP
    assert (answer.prompt_tokens, answer.completion_tokens) == (local.prompt_tokens, local.completion_tokens)
    assert "".join(d.text for d in deltas) == answer.text == deltas[-1].result.text


def test_remote_backend_failures_are_local_errors(llama_server):
    async def run():
        down = RemoteLocalBackend(f"http://127.0.0.1:{_free_port()}/v1", timeout_s=5)
        busy = RemoteLocalBackend(llama_server, queue_size=0, timeout_s=60)
        try:
            with pytest.raises(LocalError, match="unreachable"):
                await down.chat("a", "", ASK, GREEDY)
            outcomes = await asyncio.gather(
                *(busy.chat("a", "", ASK, {"temperature": 0, "max_tokens": 1}) for _ in range(3)),
                return_exceptions=True,
            )
            return outcomes
        finally:
            await down.close()
            await busy.close()

    outcomes = asyncio.run(run())
    assert sum(isinstance(o, LocalOverloaded) for o in outcomes) == 2
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1


def test_settings_select_the_backend():
    from gateway.local.children import LlamaServerPool

    assert isinstance(make_local_backend(Settings(local_max_loaded=3)), LlamaServerPool)  # the default
    assert isinstance(make_local_backend(Settings(local_backend="llama_cpp")), LlamaPool)
    with pytest.raises(ValueError, match="local_api_base"):
        make_local_backend(Settings(local_backend="remote"))
