"""Reading special token ids and the block size from a checkpoint's config.json, tokenizer files and
generation_config.json, with per-family defaults: one reader for the LLaDA, Dream, SDAR and LLaDA2.0
families (the tiny family writes its ids into its own config.json).

Each special id comes from the first source that has one that fits the vocabulary:

1. config.json's ``<role>_token_id`` (an int, or a list whose first item is taken); a value that is
   not an id of the vocabulary fails with a `CheckpointError` naming the field;
2. the tokenizer files: the token text that ``tokenizer_config.json`` or ``special_tokens_map.json``
   gives the role (``mask_token``, ``eos_token``, ``pad_token``), then the family's token texts,
   looked up in ``added_tokens_decoder`` (``tokenizer_config.json``) and ``added_tokens.json``;
3. for the end-of-turn token of a family that says so (SDAR), the ``eos_token_id`` list of
   ``generation_config.json`` other than the eos id;
4. the family's id in its real-size vocabulary.

Then pad and eot fall back to eos; a missing eos or mask id is a `CheckpointError`, and so is a
tokenizer or generation file that is not a JSON object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from system.errors import CheckpointError
from system.models.loading import read_json

ROLES = ("mask", "eos", "pad", "eot")  # in this order: eot may not repeat the eos id found before it
TOKENIZER_ROLES = ("mask", "eos", "pad")  # the roles a tokenizer file can name (``<role>_token``)


@dataclass(frozen=True)
class Token:
    """A family's special token: its texts in the tokenizer files and its id in the real-size
    vocabulary (None: the family has no default id for it)."""

    names: tuple[str, ...] = ()
    default: int | None = None


@dataclass(frozen=True)
class SpecialTokens:
    """A family's special tokens. ``eot_from_generation``: take the end-of-turn id from
    generation_config.json's eos list when the tokenizer files do not name it."""

    mask: Token
    eos: Token
    eot: Token = Token()
    pad: Token = Token()
    eot_from_generation: bool = False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def first_int(value: object) -> int | None:
    """A config id that may be an int or a list of ints (its first item); None for anything else."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if _is_int(value) else None


def padding_idx(value: object, vocab_size: int) -> int | None:
    """The embedding's ``padding_idx`` from config.json's ``pad_token_id``: None unless it is an id of
    the vocabulary."""
    pad = first_int(value)
    return pad if pad is not None and 0 <= pad < vocab_size else None


def _json_if_present(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def tokenizer_tables(directory: Path | None) -> tuple[dict[str, int], dict[str, str]]:
    """(token text -> id of the added/special tokens, role -> token text) from the tokenizer files."""
    ids: dict[str, int] = {}
    roles: dict[str, str] = {}
    if directory is None:
        return ids, roles
    tok_config = _json_if_present(directory / "tokenizer_config.json")
    for key, entry in (tok_config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("content"), str) and str(key).isdigit():
            ids.setdefault(entry["content"], int(key))
    for text, idx in _json_if_present(directory / "added_tokens.json").items():
        if isinstance(idx, int):
            ids.setdefault(text, idx)
    for source in (tok_config, _json_if_present(directory / "special_tokens_map.json")):
        for role in TOKENIZER_ROLES:
            value = source.get(f"{role}_token")
            text = value.get("content") if isinstance(value, dict) else value
            if isinstance(text, str):
                roles.setdefault(role, text)
    return ids, roles


def generation_eos_ids(directory: Path | None) -> list[int]:
    """The ``eos_token_id`` list of ``generation_config.json`` (empty when absent)."""
    if directory is None:
        return []
    value = _json_if_present(directory / "generation_config.json").get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return [v for v in values if _is_int(v)]


def config_id(config: dict, role: str, vocab_size: int) -> int | None:
    """config.json's ``<role>_token_id`` (None when absent); fails when it is not an id of the vocabulary."""
    value = config.get(f"{role}_token_id")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value < vocab_size:
        raise CheckpointError(
            f"config.json: {role}_token_id {value!r} is not an id in the vocabulary [0, {vocab_size}); "
            f"fix config.json or set model.{role}_token_id"
        )
    return value


def special_ids(
    config: dict, directory: Path | None, vocab_size: int, tokens: SpecialTokens
) -> dict[str, int]:
    """``mask_token_id``, ``eos_token_id``, ``pad_token_id`` and ``eot_token_id`` (the `ModelSpec`
    fields), each from the first source that has it (see the module docstring)."""
    table, roles = tokenizer_tables(directory)
    found: dict[str, int] = {}
    for role in ROLES:
        token: Token = getattr(tokens, role)
        candidates = [config_id(config, role, vocab_size)]
        texts = ((roles[role],) if role in roles else ()) + token.names
        candidates += [table.get(text) for text in texts]
        if role == "eot" and tokens.eot_from_generation:
            candidates += [i for i in generation_eos_ids(directory) if i != found.get("eos")]
        candidates.append(token.default)
        idx = next((i for i in candidates if i is not None and 0 <= i < vocab_size), None)
        if idx is not None:
            found[role] = idx
    if "eos" not in found:
        raise CheckpointError("no eos token id: config.json has no eos_token_id and no tokenizer file names one")
    if "mask" not in found:
        raise CheckpointError(
            f"no mask token id: config.json has no mask_token_id, no tokenizer file names one, and the "
            f"family default {tokens.mask.default} is outside the vocabulary of {vocab_size}; "
            "add mask_token_id to config.json"
        )
    found.setdefault("pad", found["eos"])
    found.setdefault("eot", found["eos"])
    return {f"{role}_token_id": found[role] for role in ROLES}


def block_size(config: dict, default: int, directory: Path | None = None) -> int:
    """config.json's ``block_size``; else, when ``directory`` is given, a ``-bN`` suffix of its name
    (``SDAR-8B-Chat-b32``); else the family's ``default``."""
    value = config.get("block_size")
    if value is not None:
        if not _is_int(value) or value < 1:
            raise CheckpointError(f"config.json: block_size must be a positive integer, got {value!r}")
        return value
    match = re.search(r"-b(\d+)$", directory.name, flags=re.IGNORECASE) if directory is not None else None
    return int(match.group(1)) if match else default
