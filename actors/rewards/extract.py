"""Finding the answer in a completion (untrusted text): ``<answer>`` spans, ``\\boxed{}`` contents,
``####`` tails, fenced code blocks, and the layout check of the ``default`` profile.

Everything here is plain string scanning with bounded work: no regular expression with nested
quantifiers runs on model text, and callers cut completions to :data:`MAX_COMPLETION_CHARS` first.
"""

from __future__ import annotations

import re

MAX_COMPLETION_CHARS = 100_000

# The innermost <answer>...</answer> pairs: the content may not hold another opening tag.
_ANSWER = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_BOX_START = re.compile(r"\\(?:boxed|fbox)")
# "The answer is 42.", "So the final answer is $42$", "Answer: 42": bounded, on the text's tail only.
_PLAIN_STATEMENT = re.compile(r"\banswer\s*(?:is|:)[ \t:]*([^\n]{1,80}?)[ \t]*\.?[ \t]*$", re.IGNORECASE | re.MULTILINE)
PLAIN_TAIL_CHARS = 2000


def answer_spans(text: str) -> list[str]:
    """Contents of every closed ``<answer>...</answer>`` pair, in order (unstripped)."""
    return [m.group(1) for m in _ANSWER.finditer(text)]


def _matching_braces(text: str) -> dict[int, int]:
    """For every ``{`` that is closed, the index of its ``}`` (one pass, so linear in the text)."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
    return match


def boxed_contents(text: str) -> list[str]:
    """Contents of every balanced ``\\boxed{...}`` / ``\\fbox{...}``, in order (nested boxes are
    part of their outer box's content)."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    match = _matching_braces(text)
    out: list[str] = []
    after = 0  # boxes inside an earlier box belong to it
    for hit in _BOX_START.finditer(text):
        j = hit.end()
        if hit.start() < after:
            continue
        while j < len(text) and text[j] == " ":
            j += 1
        end = match.get(j) if j < len(text) and text[j] == "{" else None
        if end is not None:
            out.append(text[j + 1:end])
            after = end + 1
    return out


def _distinct(values: list[str]) -> int:
    return len({" ".join(v.split()) for v in values})


def final_math_answer(text: str) -> tuple[str | None, str]:
    """The answer span of a math completion and where it came from, or (None, why not).

    Order: inside the last ``<answer>`` span, its last ``\\boxed{}`` else its whole content; with no
    answer tags, the last ``\\boxed{}`` of the text, else the line after the last ``####``, else the
    last plain statement "... answer is X" / "Answer: X" (the layout part of the score still asks
    for the tags; correctness does not). Several
    *different* answer spans, or several different boxes in the chosen region, are ambiguous (a
    hedge) and give (None, "ambiguous: ...").
    """
    spans = answer_spans(text)
    if spans:
        if _distinct(spans) > 1:
            return None, f"ambiguous: {len(spans)} different <answer> spans"
        region, source = spans[-1], "answer"
    else:
        region, source = text, "text"
    boxes = boxed_contents(region)
    if boxes:
        if _distinct(boxes) > 1:
            return None, f"ambiguous: {len(boxes)} different \\boxed{{}} answers"
        return boxes[-1].strip(), f"boxed in {source}"
    if spans:
        content = spans[-1].strip()
        return (content, "answer") if content else (None, "empty <answer> span")
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()
        return (tail, "####") if tail else (None, "nothing after ####")
    statements = _PLAIN_STATEMENT.findall(text[-PLAIN_TAIL_CHARS:])
    if statements:
        return statements[-1].strip(), "a plain statement"
    return None, "no <answer> span, \\boxed{}, #### or 'the answer is ...'"


def last_answer(text: str) -> tuple[str | None, str]:
    """The content of the last ``<answer>`` span (stripped), or (None, why not); several different
    spans are ambiguous."""
    spans = answer_spans(text)
    if not spans:
        return None, "no <answer>...</answer> span"
    if _distinct(spans) > 1:
        return None, f"ambiguous: {len(spans)} different <answer> spans"
    return spans[-1].strip(), "answer"


def fenced_blocks(text: str) -> list[str]:
    """Contents of every fenced code block (```python, ```py or bare ```), in order."""
    return _FENCE.findall(text)


def layout_ok(text: str) -> bool:
    """The ``default`` profile's format check: an optional ``<reasoning>`` (it may be prefilled in
    the prompt), one ``</reasoning>``, then exactly one ``<answer>...</answer>`` pair and nothing but
    whitespace after it. Multi-line reasoning is fine (d1's regexes lack DOTALL; this does not)."""
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return False
    if text.count("</reasoning>") != 1 or text.count("<reasoning>") > 1:
        return False
    head, _, rest = text.partition("</reasoning>")
    if "<answer>" in head or "</answer>" in head:
        return False
    if "<reasoning>" in head and head.lstrip() and not head.lstrip().startswith("<reasoning>"):
        return False
    body = rest.strip()
    return body.startswith("<answer>") and body.endswith("</answer>")
