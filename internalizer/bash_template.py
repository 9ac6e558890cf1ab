"""A shell command's template: its utilities, flags and operators in order, every other argument one `ARG`
(NL2Bash's template match). The evaluation gate (internalizer/evaluate.py) and the paper benchmark
(benchmarks/paper_metrics.py) both score with it.
"""

from __future__ import annotations

import shlex

import bashlex

# After these, the next non-flag word runs a command: keep it as a utility, not an argument.
_COMMAND_RUNNERS = {
    "sudo",
    "xargs",
    "nohup",
    "time",
    "env",
    "exec",
    "nice",
    "watch",
    "timeout",
    "-exec",
    "-execdir",
}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", "|&"}


def bash_template(cmd: str) -> list[str]:
    """The command's structure: utilities, flags and operators kept, every other argument one `ARG`.

    bashlex parses it; a command bashlex rejects falls back to shlex's approximation.
    """
    cmd = " ".join(cmd.split())
    if not cmd:
        return []
    try:
        tokens: list[str] = []
        for node in bashlex.parse(cmd):
            _visit(node, tokens)
        return tokens
    except Exception:  # bashlex raises its own errors and, on odd input, plain ones
        return _shlex_template(cmd)


def _visit(node, out: list[str]) -> None:
    kind = node.kind
    if kind == "operator":
        out.append(node.op)
    elif kind == "pipe":
        out.append(node.pipe)
    elif kind == "reservedword":
        out.append(node.word)
    elif kind == "command":
        _visit_command(node.parts, out)
    elif kind == "redirect":
        out.append(str(node.type))
        target = node.output
        if getattr(target, "kind", None) == "word":
            _visit_word(target, out, as_utility=False)
    elif kind == "word":
        _visit_word(node, out, as_utility=False)
    elif kind == "assignment":
        out.append("ASSIGN")
    else:  # list, pipeline, compound, for, if, while, function: walk the children in order
        for child in getattr(node, "parts", None) or getattr(node, "list", None) or []:
            _visit(child, out)


def _visit_command(parts, out: list[str]) -> None:
    expect_utility, seen_utility = True, False
    for part in parts:
        if part.kind != "word":
            _visit(part, out)
            continue
        word = part.word
        if not seen_utility and "=" in word and not word.startswith("-"):
            out.append("ASSIGN")  # VAR=value before the utility
            continue
        if word.startswith("-") and seen_utility:
            out.append(word.split("=", 1)[0])
            if word in _COMMAND_RUNNERS:
                expect_utility = True
            continue  # a runner's own flags (xargs -I{}) keep the next word a utility
        _visit_word(part, out, as_utility=expect_utility)
        seen_utility = True
        expect_utility = word in _COMMAND_RUNNERS


def _visit_word(word, out: list[str], as_utility: bool) -> None:
    substitutions = [
        p for p in getattr(word, "parts", []) if p.kind in ("commandsubstitution", "processsubstitution")
    ]
    if substitutions:
        for sub in substitutions:
            out.append("$(")
            _visit(sub.command, out)
            out.append(")")
    elif as_utility:
        out.append(word.word)
    else:
        out.append("ARG")


def _shlex_template(cmd: str) -> list[str]:
    try:
        lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:  # an unclosed quote
        words = cmd.split()
    out, expect_utility = [], True
    for word in words:
        if word in SHELL_OPERATORS or word in ("(", ")", ">", ">>", "<", "2>"):
            out.append(word)
            expect_utility = word in SHELL_OPERATORS or word == "("
        elif word.startswith("-") and not expect_utility:
            out.append(word.split("=", 1)[0])
            expect_utility = word in _COMMAND_RUNNERS
        else:
            out.append(word if expect_utility else "ARG")
            expect_utility = word in _COMMAND_RUNNERS
    return out
