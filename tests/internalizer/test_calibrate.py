"""Confidence from token log-probabilities on a real llama.cpp model (the tiny one), on both local backends,
and the calibration the gate stores with a model."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import httpx
import pytest

from gateway.local.confidence import SIGNALS, confidence
from gateway.local.pool import LlamaPool
from gateway.local.remote import RemoteLocalBackend
from internalizer.calibrate import ScoredAnswer, auroc, calibrate, generate_scored, item_agreement, summary
from internalizer.config import ConfigError, load_config
from tests.internalizer.conftest import short_pairs

QUERIES = [p.nl for p in short_pairs(40)[-3:]]
GREEDY = {"temperature": 0, "max_tokens": 12}


def _messages(query: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": query}]


def test_a_confident_answer_scores_above_a_random_one(tiny_gguf):
    """The model's own greedy answer against tokens drawn nearly uniformly (temperature 50): every signal
    ranks the greedy answer above the random one, for every query."""

    async def run():
        pool = LlamaPool(n_threads=1, timeout_s=60)
        try:
            out = []
            for query in QUERIES:
                greedy = await pool.chat("tiny", str(tiny_gguf), _messages(query), GREEDY)
                noise = {"temperature": 50.0, "seed": 7, "max_tokens": 12}
                random_ = await pool.chat("tiny", str(tiny_gguf), _messages(query), noise)
                out.append((greedy, random_))
            return out
        finally:
            await pool.close()

    for greedy, random_ in asyncio.run(run()):
        assert greedy.token_logprobs and random_.token_logprobs
        assert all(lp <= 0 for lp in greedy.token_logprobs + random_.token_logprobs)
        # One log-probability per generated token (the end-of-text step is not a token of the answer).
        if greedy.finish_reason == "stop":
            assert len(greedy.token_logprobs) == greedy.completion_tokens
        for signal in SIGNALS:
            if signal == "sum" and len(greedy.token_logprobs) > len(random_.token_logprobs):
                continue  # a sum also counts length; compare it on answers of comparable length
            assert confidence(greedy.token_logprobs, signal) > confidence(random_.token_logprobs, signal)
        # The greedy answer's tokens are each the most likely one: a low but not hopeless probability.
        assert confidence(greedy.token_logprobs, "mean") > confidence(random_.token_logprobs, "mean") + 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_llama_cpp_server_reports_the_same_log_probabilities_as_the_pool(tiny_gguf):
    """Confidence must not depend on which local backend serves the model: the remote backend asks
    llama-cpp-python's server for the tokens' log-probabilities, JSON and streamed."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_gguf), "--model_alias", "tiny",
         "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        api_base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{api_base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        query = QUERIES[0]

        async def run():
            remote = RemoteLocalBackend(api_base, timeout_s=60)
            pool = LlamaPool(n_threads=1, timeout_s=60)
            try:
                params = {**GREEDY, "logprobs": True}
                local = await pool.chat("tiny", str(tiny_gguf), _messages(query), params)
                served = await remote.chat("tiny", "-", _messages(query), params)
                streamed = None
                async for delta in remote.chat_stream("tiny", "-", _messages(query), params):
                    streamed = delta.result or streamed
                unasked = await remote.chat("tiny", "-", _messages(query), GREEDY)
                return local, served, streamed, unasked
            finally:
                await remote.close()
                await pool.close()

        local, served, streamed, unasked = asyncio.run(run())
    finally:
        server.kill()
        server.wait()
    assert served.text == local.text == streamed.text
    assert unasked.token_logprobs is None  # not asked for: the server is spared the work
    n = len(local.token_logprobs)  # the pool leaves out the last token of a length-capped answer
    assert n >= 1 and len(served.token_logprobs) in (n, n + 1)
    assert served.token_logprobs[:n] == pytest.approx(local.token_logprobs, abs=1e-3)
    assert streamed.token_logprobs[:n] == pytest.approx(local.token_logprobs, abs=1e-3)


def test_generate_scored_matches_the_pool(tiny_gguf):
    """The gate scores answers with the same recorder the gateway's pool uses, on a model that answers
    request after request without a reset, as the pool does (the shared prefix comes from the cache)."""
    queries = [QUERIES[1], QUERIES[0], QUERIES[1]]
    scored = generate_scored(tiny_gguf, [_messages(q) for q in queries], max_tokens=12)

    async def run():
        pool = LlamaPool(n_threads=1, timeout_s=60)
        try:
            return [await pool.chat("tiny", str(tiny_gguf), _messages(q), GREEDY) for q in queries]
        finally:
            await pool.close()

    served = asyncio.run(run())
    assert [s.text for s in scored] == [s.text for s in served]
    for answer in scored:  # a time for every sampling step: what an answer stopped part way cost
        assert len(answer.step_seconds) >= len(answer.token_logprobs) >= 1
        assert list(answer.step_seconds) == sorted(answer.step_seconds)
        assert 0 < answer.step_seconds[0] <= answer.step_seconds[-1] <= answer.seconds
    for mine, theirs in zip(scored, served, strict=True):
        assert mine.token_logprobs == pytest.approx(theirs.token_logprobs, abs=1e-4)
    assert scored[2].text == scored[0].text  # the same query after another: the cache changes nothing
    assert scored[2].token_logprobs == pytest.approx(scored[0].token_logprobs, abs=1e-4)


def _answers(spec: list[tuple[float, bool]]) -> tuple[list[ScoredAnswer], list[str]]:
    answers = [ScoredAnswer("ls -la" if right else "rm -rf x", (conf, conf)) for conf, right in spec]
    return answers, ["ls -la"] * len(spec)


def test_calibration_stores_the_curve_and_a_bounded_threshold():
    # 40 confident right answers, then 40 less confident ones of which half are right.
    spec = [(-0.01 * i, True) for i in range(40)] + [(-1 - 0.01 * i, i % 2 == 0) for i in range(40)]
    answers, references = _answers(spec)
    cal = calibrate(answers, references, metric="exact", signal="mean", target=0.9, min_coverage=0.1)
    assert cal["n"] == 80 and cal["overall_agreement"] == 0.75
    assert cal["selective"] and cal["route_threshold"] == cal["threshold"] == -0.24
    # The checkpoints are 25 answers apart (25 right answers are the fewest that promise 0.9): the first 25
    # pass; the next 25 take in 10 of the less confident (5 wrong), 45 of 50 cannot promise 0.9.
    assert cal["coverage"] == 25 / 80 and cal["agreement"] == 1.0 and 0.9 <= cal["lower_bound"] < 1.0
    [checkpoint] = [p for p in cal["curve"] if p["n_routed"] == 50]
    assert checkpoint["agreement"] == 0.9 and checkpoint["lower_bound"] < 0.9
    assert len(cal["curve"]) == 80 and cal["curve"][0]["coverage"] == 1 / 80
    # 60 right, 20 wrong: the 40 confident right ones outrank every wrong one, the 20 others interleave.
    assert cal["auroc"]["mean"] == pytest.approx((40 * 20 + 210) / (60 * 20))
    assert "routes 31%" in summary(cal) and "serves selectively" in summary(cal)
    # The same model, judged on a stricter minimum coverage: a threshold exists but is not used.
    strict = calibrate(answers, references, min_coverage=0.6)
    assert strict["threshold"] is not None and not strict["selective"] and strict["route_threshold"] is None
    # Too few held-out requests: no promise at all.
    few = calibrate(*_answers(spec[:8]))
    assert few["threshold"] is None and not few["selective"] and "no confidence threshold" in summary(few)


def test_an_unscored_answer_is_never_routed():
    answers = [ScoredAnswer("ls -la", (-0.01,))] * 30 + [ScoredAnswer("", ())]
    cal = calibrate(answers, ["ls -la"] * 31)
    assert cal["curve"][-1]["coverage"] == pytest.approx(30 / 31)
    assert cal["selective"] and cal["coverage"] < 1.0


def test_item_agreement_and_auroc():
    assert item_agreement("exact", "```\nls -la\n```", "ls -la") == 1.0
    assert item_agreement("bash", "ls -la /tmp", "ls -la /home") == 1.0  # same command template
    assert 0 < item_agreement("chrf", "ls -l", "ls -la") < 1
    with pytest.raises(ValueError, match="unknown agreement metric"):
        item_agreement("bleu", "a", "b")
    assert auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auroc([0.1, 0.8], [True, False]) == 0.0 and auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.1], [True]) is None


def test_a_template_can_have_its_own_routing_target(tmp_path):
    path = tmp_path / "internalize.yaml"
    path.write_text(
        "route_target: 0.9\nper_template:\n  3fa2c1d0: {route_target: 0.95, route_metric: chrf}\n"
    )
    cfg = load_config(path)
    assert cfg.for_template("3fa2c1d0e5b7").route_target == 0.95  # by id prefix
    assert cfg.for_template("3fa2c1d0e5b7").route_metric == "chrf"
    assert cfg.for_template("77aa00").route_target == 0.9 and cfg.for_template("77aa00") is cfg
    bad = load_config(overrides={"per_template": {"3fa2": {"route_treshold": 0.5}}})
    with pytest.raises(ConfigError, match="route_treshold"):
        bad.for_template("3fa2c1d0")
    with pytest.raises(ConfigError, match="route_target"):
        load_config(overrides={"per_template": {"3fa2": {"route_target": 1.5}}}).for_template("3fa2")
