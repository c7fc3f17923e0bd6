"""Prompt rendering in d1's format: instructions asking for ``<reasoning>...</reasoning>`` then
``<answer>...</answer>`` (with ``\\boxed{}`` inside the answer when asked), then the task text, as
one user turn through the tokenizer's own chat template (``apply_chat_template``), optionally
followed by a prefilled ``<reasoning>``.

As in d1, the instructions sit in the user turn rather than a system turn, so chat templates without
a system role work unchanged. The instruction wording of each task is this project's own; the
answer layout is d1's exactly, because the d1 reward profile scores that layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from system.types import Example

if TYPE_CHECKING:
    from system.config import DataConfig

LAYOUT = "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
LAYOUT_BOXED = "<reasoning>\n...\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>"
BOXED_BY_DEFAULT = ("math", "aime")
PLAIN_TASKS = ("copy", "add")  # synthetic tasks: the prompt text alone, as the tiny model's SFT saw it
PREFILL = "<reasoning>\n"


@dataclass(frozen=True)
class PromptStyle:
    """How to render: ``boxed`` asks for ``\\boxed{}`` inside ``<answer>`` (None: the task's default,
    yes for math and aime); ``prefill_reasoning`` opens the reasoning for the model (d1's evaluation)."""

    boxed: bool | None = None
    prefill_reasoning: bool = False

    @classmethod
    def from_config(cls, cfg: DataConfig) -> PromptStyle:
        return cls(boxed=cfg.prompt_boxed, prefill_reasoning=cfg.prefill_reasoning)

    def wants_boxed(self, task: str) -> bool:
        return self.boxed if self.boxed is not None else task in BOXED_BY_DEFAULT


def instructions(task: str, boxed: bool) -> str:
    """The format instructions that precede the task text."""
    if task == "code":
        return ("\nRespond in the following format, with your complete Python code in one ```python "
                "fenced block inside the answer tags:\n<reasoning>\n...\n</reasoning>\n<answer>\n"
                "```python\n...\n```\n</answer>\n")
    if boxed:
        return ("\nRespond in the following format, and write the final answer inside \\boxed{} in the "
                f"answer tags:\n{LAYOUT_BOXED}\n")
    return f"\nRespond in the following format:\n{LAYOUT}\n"


def user_message(example: Example, style: PromptStyle = PromptStyle()) -> str:
    if example.task in PLAIN_TASKS:
        return example.prompt
    return instructions(example.task, style.wants_boxed(example.task)) + "\n\n" + example.prompt


def render_prompt(tokenizer: PreTrainedTokenizerBase, example: Example, style: PromptStyle = PromptStyle()) -> str:
    """The full prompt text: chat template with the generation prompt, then the optional prefill."""
    messages = [{"role": "user", "content": user_message(example, style)}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"the chat template rendered {type(text).__name__}, not text")
    return text + (PREFILL if style.prefill_reasoning else "")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, example: Example, style: PromptStyle = PromptStyle(),
               max_length: int | None = None) -> list[int]:
    """Token ids of :func:`render_prompt`, left-truncated to ``max_length`` (as d1 does)."""
    ids = tokenizer(render_prompt(tokenizer, example, style), add_special_tokens=False)["input_ids"]
    return list(ids[-max_length:] if max_length else ids)
