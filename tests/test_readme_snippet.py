"""Runs the "your own training loop" snippet (README.md if it has it, else docs)."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- snippet:own-loop -->", "<!-- /snippet -->"


def extract(text: str) -> str | None:
    """The python code block between the snippet markers, or ``None``."""
    if START not in text:
        return None
    body = text.split(START, 1)[1].split(END, 1)[0]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    if match is None:
        raise ValueError("the own-loop snippet markers hold no ```python block")
    return match.group(1)


def snippet() -> tuple[str, str]:
    for rel in ("README.md", os.path.join("docs", "core_api_notes.md")):
        path = os.path.join(ROOT, rel)
        if os.path.exists(path):
            code = extract(open(path, encoding="utf-8").read())
            if code is not None:
                return rel, code
    raise AssertionError("no own-loop snippet in README.md or docs/core_api_notes.md")


def test_own_loop_snippet_runs_and_is_short():
    where, code = snippet()
    assert len(code.strip().splitlines()) <= 30, f"{where}: the snippet has more than 30 lines"
    exec(compile(code, f"{where}:own-loop", "exec"), {"__name__": "snippet"})


def test_extract_finds_the_block_and_the_snippet_can_fail():
    text = f"x\n{START}\n```python\nassert 1 == 2\n```\n{END}\n"
    code = extract(text)
    assert code == "assert 1 == 2\n"
    with pytest.raises(AssertionError):
        exec(code, {})
    assert extract("no markers") is None
