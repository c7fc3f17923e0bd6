"""The string-normalisation answer check of the MATH benchmark (Hendrycks et al.), as d1's
``math500_utils`` applies it; used only by the ``d1`` profile of the ``math`` / ``aime`` rewards.

Reproduced with its quirks, because the ``d1`` profile must give the published numbers:

- :func:`last_boxed_only` returns the *whole text* when there is no ``\\boxed`` / ``\\fbox`` (so a
  completion without a box is compared whole and practically never matches), None when the last box
  is unclosed, and for ``\\boxed `` (a space, no brace) the rest of the text up to the next ``$``;
- :func:`strip_answer` raises on some inputs (``\\text{ `` twice, ``\\sqrt`` or ``\\frac`` at the end,
  a non-integer ``a/b``), and :func:`is_equiv` then compares the raw strings;
- ``0.5`` equals ``\\frac{1}{2}`` but ``0.25`` does not equal ``\\frac{1}{4}``; ``x = 3`` equals ``3``
  only when the left side has at most two characters; commas are never removed.

Written from the behaviour, not copied; see PROFILES.md for how it differs from math-verify.
"""

from __future__ import annotations


def last_boxed_only(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) including the command, with the quirks above."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def remove_boxed(text: str) -> str:
    """``\\boxed{x}`` -> ``x``; anything else unchanged. ``\\boxed x`` must start the text (else
    AssertionError, as in the original); a None argument raises TypeError."""
    if "\\boxed " in text:
        if not text.startswith("\\boxed "):
            raise AssertionError("'\\boxed ' not at the start")
        return text[len("\\boxed "):]
    if text.startswith("\\boxed{") and text.endswith("}"):
        return text[len("\\boxed{"):-1]
    return text


def _fix_fracs(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``; IndexError when a
    ``\\frac`` ends the text."""
    head, *parts = text.split("\\frac")
    out = head
    for part in parts:
        out += "\\frac"
        if part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return text
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(text: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}`` for plain integers; ValueError (uncaught, as in the original) when
    a side is not an integer."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    a, b = int(parts[0]), int(parts[1])
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if text == f"{a}/{b}" else text


def _remove_right_units(text: str) -> str:
    if "\\text{ " not in text:
        return text
    parts = text.split("\\text{ ")
    if len(parts) != 2:
        raise AssertionError("more than one '\\text{ '")
    return parts[0]


def _fix_sqrt(text: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``; IndexError when a ``\\sqrt`` ends the text."""
    if "\\sqrt" not in text:
        return text
    head, *parts = text.split("\\sqrt")
    return head + "".join("\\sqrt" + p if p[0] == "{" else "\\sqrt{" + p[0] + "}" + p[1:] for p in parts)


def strip_answer(text: str) -> str:
    """MATH's normalisation of an answer string (may raise; see the module docstring)."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        text = text.replace(old, new)
    text = _remove_right_units(text)
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _fix_sqrt(text)
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _fix_a_slash_b(text)


def is_equiv(a: str | None, b: str | None) -> bool:
    """Equal after :func:`strip_answer`; equal as raw strings when the normalisation raises."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return strip_answer(a) == strip_answer(b)
    except Exception:  # the original falls back to raw equality on any error
        return a == b
