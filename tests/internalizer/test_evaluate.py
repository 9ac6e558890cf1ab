from __future__ import annotations

import pytest

from internalizer.evaluate import bash_template, chrf, exact_match, gate_passes, normalise, score


def test_normalise_strips_fences_prompt_and_space():
    assert normalise("```bash\nls   -la\n```") == "ls -la"
    assert normalise("$ find .  -name x ") == "find . -name x"


def test_exact_and_chrf():
    assert exact_match(" ls  -la", "ls -la") == 1.0
    assert exact_match("ls -l", "ls -la") == 0.0
    assert chrf("find . -name '*.py'", "find . -name '*.py'") == pytest.approx(1.0)
    assert chrf("qqqq", "find") == 0.0
    close, far = chrf("find . -name '*.txt'", "find . -name '*.py'"), chrf("du -sh", "find . -name '*.py'")
    assert 0 < far < close < 1


def test_bash_template_keeps_utilities_flags_operators():
    assert bash_template("find /tmp -name '*.log' | xargs rm -f") == [
        "find",
        "ARG",
        "-name",
        "ARG",
        "|",
        "xargs",
        "rm",  # xargs runs a command: its first word is a utility, not an argument
        "-f",
    ]
    assert bash_template("grep -r foo src") == bash_template("grep -r bar lib")
    assert bash_template("grep -r foo src") != bash_template("grep -ri foo src")
    assert bash_template("echo $(( 1 +") == ["echo", "ARG", "ARG", "ARG", "ARG"]  # unparsable: shlex fallback


def test_score_and_gate():
    scores = score(["ls -la", "du -sh ."], ["ls -la", "df -h"], task_metric="bash")
    assert scores["exact"] == 0.5 and scores["n"] == 2 and 0.5 <= scores["chrf"] < 1
    assert gate_passes(scores, "exact", 0.5) and not gate_passes(scores, "exact", 0.6)
    with pytest.raises(ValueError, match="unknown task metric"):
        score(["a"], ["a"], task_metric="sql")


def test_gate_bar_is_the_floor_raised_to_the_full_prompt_score():
    from internalizer.evaluate import gate_bar

    scores = {"internalized": {"chrf": 0.29}, "base_full_prompt": {"chrf": 0.22}}
    assert gate_bar(scores, "chrf", 0.2, vs_full_prompt=True) == 0.22
    assert gate_bar(scores, "chrf", 0.3, vs_full_prompt=True) == 0.3
    assert gate_bar(scores, "chrf", 0.1, vs_full_prompt=False) == 0.1
    assert gate_bar({"internalized": {"chrf": 0.5}}, "chrf", 0.1, vs_full_prompt=True) == 0.1  # no reference
