"""The ``stabledrl`` command line. Each subcommand validates its config before any work starts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from system.config import load_config
from system.errors import CheckpointError, ConfigError, DataError, RunFailed
from system.workers.base import WorkerStartError


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML config under configs/ (defaults if omitted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one key (repeatable), e.g. --set sft.steps=100")


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from learner.sft import run_sft

    print(json.dumps(run_sft(cfg)))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    cfg = load_config(args.config, args.overrides)
    cfg.model.path = args.checkpoint
    from actors.generate import generate_texts
    from system.models.build import build_policy

    model, tokenizer = build_policy(cfg.model, cfg.seed)
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    texts, outs = generate_texts(model, tokenizer, args.prompt, cfg.decoding, generator,
                                 max_prompt_length=cfg.data.max_prompt_length)
    for prompt, text in zip(args.prompt, texts):
        print(json.dumps({"prompt": prompt, "completion": text}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"output_dir={args.run_dir}")
    cfg = load_config(args.config, overrides)
    from system.driver import train

    print(json.dumps(train(cfg, resume=args.resume)))
    return 0


def cmd_model_inspect(args: argparse.Namespace) -> int:
    from system.models import load_model

    model = load_model(args.path, dtype=args.dtype)
    spec = model.spec
    info = {
        "path": str(args.path), "family": spec.arch, "attention": spec.attention, "block_size": spec.block_size,
        "parameters": model.num_parameters(), "dtype": str(model.dtype).removeprefix("torch."),
        "vocab_size": spec.vocab_size, "mask_token_id": spec.mask_token_id, "eos_token_id": spec.eos_token_id,
        "pad_token_id": spec.pad_token_id, "eot_token_id": spec.eot_token_id, "logits_shift": spec.logits_shift,
    }
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The CPU demo (system/demo.py): data, cached SFT, eval, StableDRL through Ray, eval, report. CPU
    kernels are pinned first (system/kernels.py) so that its numbers are the same on every x86-64 machine."""
    from system.kernels import pin_cpu_kernels

    pin_cpu_kernels(threads=2)
    from system.demo import print_result, run_demo

    result = run_demo(args.task, Path(args.run_dir), args.sft_set, args.overrides, args.limit, args.seed,
                      args.sft_seed, Path(args.sft_cache) if args.sft_cache else None)
    print_result(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stabledrl", description="RL for diffusion language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="print the resolved config (validates it)")
    _config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("sft", help="masked-diffusion supervised fine-tuning")
    _config_args(p, required=True)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("train", help="RL training (local or Ray mode, from cluster.mode)")
    _config_args(p, required=True)
    p.add_argument("--run-dir", default=None, help="run directory (default: output_dir of the config)")
    p.add_argument("--resume", default=None,
                   help="a RUN_DIR/checkpoints/step-N directory to continue from (the last step is checkpointed "
                   "too: raise rollout.steps to continue a finished run)")
    p.set_defaults(func=cmd_train)

    from actors.eval_cli import add_eval_parser
    from actors.tasks.cli import add_data_parser
    from system.monitoring.cli import add_report_parser

    add_eval_parser(sub)
    add_data_parser(sub)
    add_report_parser(sub)

    p = sub.add_parser("sample", help="decode completions from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    _config_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("model", help="model utilities")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    pi = msub.add_parser("inspect", help="family, parameters, special ids, block size and dtype of a checkpoint")
    pi.add_argument("path")
    pi.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    pi.set_defaults(func=cmd_model_inspect)

    p = sub.add_parser("demo", help="the CPU demo: data, SFT (cached), eval, StableDRL through Ray, eval, report")
    p.add_argument("--task", default="sudoku", choices=["sudoku", "countdown", "copy", "add"])
    p.add_argument("--run-dir", default="runs/demo", help="where checkpoints, metrics and the report go")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N test examples only")
    p.add_argument("--seed", type=int, default=0, help="seed of the RL stage (the task data stays fixed)")
    p.add_argument("--sft-seed", type=int, default=0, help="seed of the SFT stage (the task data stays fixed)")
    p.add_argument("--sft-cache", default=None, help="where SFT checkpoints are cached (default: RUN_DIR/sft)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the RL config (configs/demo_rl.yaml)")
    p.add_argument("--sft-set", dest="sft_set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the SFT config")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 on success, 2 for a bad input (config, data file, checkpoint, model path: one line
    naming it and the fix, also when a worker's constructor is what found it), 1 for a run that failed
    or was stopped mid-way (one line naming the role, the step and the checkpoint to resume from)."""
    from system.malloc import tune_malloc

    tune_malloc()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkerStartError as e:
        if e.user_error is None:  # a fault, not a bad input: the whole report is the useful part
            raise
        print(f"error: {e.user_error}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if type(e).__name__ == "RunStopped":  # system.driver imports torch: matched by name
            print(f"stopped by the collapse monitor: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
