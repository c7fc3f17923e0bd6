"""``stabledrl eval``: score a checkpoint on a task split (d1 protocol, see :mod:`actors.evaluate`).

Prints the first examples and a summary table, then, as the last line, the summary as one JSON
object. :func:`add_eval_parser` adds the subcommand to the ``stabledrl`` parser.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_eval_parser", "cmd_eval"]


def cmd_eval(args: argparse.Namespace) -> int:
    from actors.evaluate import evaluate_records, format_table, write_records
    from system.config import load_config

    cfg = load_config(args.config, args.overrides)
    summary, records = evaluate_records(cfg, args.checkpoint, args.limit, args.split, greedy=not args.sample)
    if args.records:
        write_records(records, args.records)
    print(format_table(summary, records, args.show))
    print(json.dumps(summary))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval`` to a subparsers object (``parser.add_subparsers()``); returns its parser."""
    p = subparsers.add_parser("eval", help="score a checkpoint on a task's test split (d1 protocol)",
                              description="Decode a task split with the config's decoding knobs (greedy unless "
                              "--sample) and score it with the task's reward; last line: one JSON object.")
    p.add_argument("--config", "-c", required=True, help="YAML config (task, decoding, reward profile)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. RUN/final)")
    p.add_argument("--split", default="test", help="which split to score: test (default) or train")
    p.add_argument("--limit", type=_positive, default=None, help="score only the first N examples")
    p.add_argument("--sample", action="store_true", help="sample at decoding.temperature instead of greedy")
    p.add_argument("--show", type=int, default=8, help="examples printed in the table (default 8)")
    p.add_argument("--records", default=None, metavar="PATH", help="also write every scored example as JSONL")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set decoding.gen_length=64")
    p.set_defaults(func=cmd_eval)
    return p
