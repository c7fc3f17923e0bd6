"""Typed configuration: one pydantic model per section, the defaults (here and nowhere else), YAML
loading with ``--set section.key=value`` overrides, and error messages that name the key path, the
value and what is allowed.

Sections: model, decoding, data, rollout, reward, learner, algorithm, cluster, logging, monitor, sft.
A YAML file under ``configs/`` may ``include:`` other files (paths relative to it); later keys win.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from system.errors import ConfigError

__all__ = ["Config", "ConfigError", "build_config", "dump_config", "load_config"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class TinyModelConfig(Section):
    """Architecture of the built-in masked-diffusion transformer (used when ``model.path`` is unset)."""

    hidden_size: int = Field(128, ge=8, le=4096, description="Model width.")
    num_hidden_layers: int = Field(4, ge=1, le=64, description="Transformer blocks.")
    num_attention_heads: int = Field(4, ge=1, le=64, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(344, ge=8, le=16384, description="SwiGLU hidden width.")
    max_position_embeddings: int = Field(1024, ge=16, description="Longest sequence the model is used on.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base.")
    attention: Literal["full", "block"] = Field("full", description="full: bidirectional; block: block-causal.")
    block_size: int | None = Field(None, ge=1, description="Block length when attention is 'block'.")

    @model_validator(mode="after")
    def _check(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("the head dimension (hidden_size / num_attention_heads) must be even for RoPE")
        if self.attention == "block" and self.block_size is None:
            raise ValueError("attention 'block' needs block_size (e.g. 4, 8 or 32)")
        return self


class ModelConfig(Section):
    """Which model to load, and overrides of what its checkpoint says."""

    path: str | None = Field(
        None, description="Local checkpoint directory (any known family). None: build the tiny model."
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on GPU."
    )
    device: str = Field("cpu", description="torch device string: cpu, cuda, cuda:1 ...")
    mask_token_id: int | None = Field(None, ge=0, description="Override the checkpoint's mask token id.")
    eos_token_id: int | None = Field(None, ge=0, description="Override the checkpoint's EOS id.")
    block_size: int | None = Field(None, ge=1, description="Override the block size of block families.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")


class DecodingConfig(Section):
    """LLaDA semi-autoregressive sampling (ALGORITHMS.md section 1)."""

    gen_length: int = Field(128, ge=1, description="Completion tokens to generate (L).")
    block_length: int = Field(32, ge=1, description="Semi-autoregressive block length (B); divides gen_length.")
    steps: int = Field(64, ge=1, description="Total denoising steps (T); a multiple of gen_length / block_length.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="Gumbel-max temperature; 0 = greedy.")
    remasking: Literal["low_confidence", "random", "threshold", "factor"] = Field(
        "low_confidence",
        description="low_confidence: the k most confident; random: k uniformly random; threshold: every "
        "position whose confidence reaches confidence_threshold (at least one; Fast-dLLM parallel decoding); "
        "factor: the n most confident with (n + 1)(1 - c_n) < parallel_factor (at least one; Fast-dLLM).",
    )
    confidence_threshold: float = Field(0.9, gt=0.0, le=1.0, description="Threshold of 'threshold' remasking.")
    parallel_factor: float = Field(1.0, gt=0.0, description="f of 'factor' remasking; larger reveals more a step.")
    use_cache: bool = Field(True, description="Exact KV cache of finished blocks for block-attention models.")
    cache: Literal["none", "prefix", "dual"] = Field(
        "none",
        description="Approximate KV cache of full-attention models, refreshed once per block (Fast-dLLM): prefix "
        "caches the tokens before the block, dual also the masked suffix after it. Samples from a distribution "
        "near, not equal to, the policy's (rollouts record it in decode_stats); block models ignore it.",
    )
    top_k: int | None = Field(None, ge=1, description="Keep only the k most likely tokens when sampling.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    cfg_scale: float = Field(0.0, ge=0.0, description="Classifier-free guidance scale s (0 = off).")
    stop_at_eos: bool = Field(True, description="Stop once every row has a block of only EOS.")

    @model_validator(mode="after")
    def _check(self) -> DecodingConfig:
        if self.gen_length % self.block_length:
            raise ValueError(
                f"block_length ({self.block_length}) must divide gen_length ({self.gen_length})"
            )
        num_blocks = self.gen_length // self.block_length
        if self.steps % num_blocks:
            raise ValueError(
                f"steps ({self.steps}) must be a multiple of the number of blocks "
                f"gen_length / block_length = {num_blocks}"
            )
        if self.steps // num_blocks > self.block_length:
            raise ValueError(
                f"steps per block ({self.steps // num_blocks}) exceeds block_length ({self.block_length}): "
                "some steps would reveal nothing; lower steps"
            )
        if self.cache != "none" and self.cfg_scale > 0:
            raise ValueError(
                f"cache '{self.cache}' does not support classifier-free guidance (cfg_scale {self.cfg_scale}); "
                "set decoding.cache: none or decoding.cfg_scale: 0"
            )
        return self


class DataConfig(Section):
    """Where examples come from."""

    task: str = Field("copy", description="Task name (`stabledrl data list`).")
    train_path: str | None = Field(
        None, description="Local data: JSONL / Parquet / CSV / save_to_disk directory with the task's public field "
        "names (SFT also reads JSONL with 'prompt' and 'completion'). None: generated, for tasks with a generator.")
    test_path: str | None = Field(None, description="Held-out examples in the same format.")
    max_prompt_length: int = Field(256, ge=1, description="Longer prompts are left-truncated.")
    num_train: int = Field(2000, ge=1, description="Examples to generate when no train_path is given.")
    num_test: int = Field(200, ge=1, description="Examples to generate when no test_path is given.")
    seed: int = Field(0, description="Seed of the data generator.")
    # Task datasets, prompts and generators (actors/tasks, actors/generators).
    prompt_boxed: bool | None = Field(
        None, description="Ask for \\boxed{} inside <answer> (d1's evaluation prompts); None: the task's own "
        "default (math, aime: yes; the others: no)."
    )
    prefill_reasoning: bool = Field(
        False, description="End the rendered prompt with '<reasoning>\\n' after the assistant header (d1's evaluation)."
    )
    code_format: Literal["auto", "humaneval", "mbpp", "kodcode"] = Field(
        "auto", description="Field layout of code datasets; auto: decided per row from its fields."
    )
    code_max_test_cases: int = Field(
        16, ge=1, le=1000, description="Code: sandbox runs per completion at most; HumanEval asserts beyond it are "
        "grouped, KodCode / MBPP tests beyond it dropped."
    )
    sudoku_size: Literal[4, 9] = Field(4, description="Generated sudoku: 4 (2x2 boxes) or 9 (3x3 boxes).")
    sudoku_blanks: int | None = Field(
        None, ge=1, le=64, description="Generated sudoku: empty cells per puzzle (4x4: at most 12, 9x9: at most 64); "
        "None: 8 for 4x4 (d1's test set), 45 for 9x9."
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Generated sudoku: share of solution grids held out for the test split."
    )
    countdown_numbers: int = Field(3, ge=2, le=6, description="Generated countdown: numbers per puzzle (d1: 3).")
    countdown_max_number: int = Field(99, ge=1, le=1_000_000, description="Generated countdown: numbers in [1, this].")
    countdown_max_target: int = Field(
        100, ge=1, le=1_000_000_000, description="Generated countdown: targets in [1, this]."
    )
    countdown_ops: str = Field("+-*/", description="Generated countdown: operators the recorded solution may use.")

    @model_validator(mode="after")
    def _check_task_fields(self) -> DataConfig:
        most = {4: 12, 9: 64}[self.sudoku_size]
        if self.sudoku_blanks is not None and self.sudoku_blanks > most:
            raise ValueError(f"sudoku_blanks ({self.sudoku_blanks}) must be at most {most} for sudoku_size "
                             f"{self.sudoku_size} (a unique solution needs enough givens); lower it")
        if not self.countdown_ops or set(self.countdown_ops) - set("+-*/"):
            raise ValueError(f"countdown_ops {self.countdown_ops!r} must be a non-empty subset of '+-*/'")
        return self


class RolloutConfig(Section):
    group_size: int = Field(8, ge=2, description="Completions per prompt (G).")
    prompts_per_step: int = Field(4, ge=1, description="Prompts per RL step.")
    num_actors: int = Field(1, ge=1, description="Rollout workers.")
    max_staleness: int = Field(0, ge=0, description="Admit groups at most this many versions old (0 = on-policy).")
    decode_batch_size: int = Field(32, ge=1, description="Rows (prompt x completion) decoded together.")
    steps: int = Field(100, ge=1, description="RL steps (learner updates of rollout batches) to run.")
    mode: Literal["sync", "async", "stream"] = Field(
        "sync", description="sync: generate then learn; async: generation of step n+1 overlaps learning on step n; "
        "stream: actors generate continuously, each group joins the buffer once scored (system/stream.py).")
    stream_capacity: int | None = Field(
        None, ge=1, description="stream: groups in flight, waiting to be scored or buffered at most (back-pressure: "
        "no new prompt is issued beyond it); None: one batch ahead (2 x prompts_per_step) when max_staleness >= 1, "
        "else prompts_per_step. At least prompts_per_step.")
    stream_swap: Literal["group", "block"] = Field(
        "group", description="stream: when an actor takes a newly published version: between groups, or also "
        "between the decoding blocks of a group (per-token versions recorded; system/stream_swap.py).")
    publish_every: int = Field(1, ge=1, description="Publish new weights to the rollout workers every n steps.")
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint every n steps (0: only at the end).")
    eval_every: int = Field(
        0, ge=0, description="Score the live policy on the test split (greedy, as `stabledrl eval`) before step 1, "
        "every n steps and after the last step, logged as eval/*; a multiple of publish_every (0: never).")
    eval_limit: int | None = Field(
        None, ge=1, description="Test examples of each periodic evaluation (the first n; None: the whole split).")
    weight_transport: Literal["auto", "inprocess", "ray", "filesystem"] = Field(
        "auto", description="How new weights reach the rollout workers; auto: inprocess locally, ray in Ray mode.")
    weight_dir: str | None = Field(None, description="Shared directory of the filesystem transport.")
    debug_mode: Literal["none", "rollout_only", "train_only"] = Field(
        "none", description="rollout_only: generate and score, dump groups to dump_path, no learner; "
        "train_only: train from the groups of dump_path, no rollout workers.")
    dump_path: str | None = Field(None, description="Rollout dump (JSONL); default RUN_DIR/rollouts.jsonl.")

    @model_validator(mode="after")
    def _check(self) -> RolloutConfig:
        if self.stream_capacity is not None and self.stream_capacity < self.prompts_per_step:
            raise ValueError(f"stream_capacity ({self.stream_capacity}) is below prompts_per_step "
                             f"({self.prompts_per_step}): no batch could ever fill; raise it or leave it unset")
        if self.eval_every % self.publish_every:
            raise ValueError(f"eval_every ({self.eval_every}) must be a multiple of publish_every "
                             f"({self.publish_every}): an evaluation scores the weights the rollout workers hold")
        return self


class RewardConfig(Section):
    profile: Literal["default", "d1"] = Field(
        "default", description="default: correctness-first; d1: the published scoring with its quirks."
    )
    num_workers: int = Field(1, ge=1, description="Reward worker processes.")
    timeout_s: float = Field(10.0, gt=0, description="Per-item scoring time limit.")
    # Reward functions and workers (actors/rewards, actors/reward_worker.py).
    format_weight: float = Field(
        0.1, ge=0.0, le=1.0, description="default profile: score = (1 - w) * correctness + w * format; 0 scores "
        "correctness only."
    )
    code_max_timeouts: int = Field(
        1, ge=1, le=1000, description="Code: once this many test runs of one completion timed out, its remaining "
        "tests count as failed without running (an endless loop would fail them all)."
    )
    start_method: Literal["forkserver", "spawn"] = Field(
        "forkserver", description="How reward worker processes start (never fork: torch is loaded in the parent)."
    )
    # Code sandbox (actors/sandbox): where generated code runs and the limits of one run.
    sandbox: Literal["process", "http"] = Field(
        "process", description="process: local child processes (actors/sandbox/process.py); http: a "
        "Sandbox-Fusion-style run_code service at sandbox_url."
    )
    sandbox_url: str | None = Field(None, description="run_code service, e.g. http://sandbox:8080 (sandbox: http).")
    sandbox_cpu_s: float = Field(5.0, ge=0.01, le=3600, description="CPU seconds per sandboxed process (RLIMIT_CPU).")
    sandbox_wall_s: float = Field(
        10.0, ge=0.01, le=3600, description="Wall-clock seconds per sandbox run; then all its processes are killed."
    )
    sandbox_memory_mb: int = Field(512, ge=32, le=1 << 20, description="Address space per process, MiB (RLIMIT_AS).")
    sandbox_max_processes: int = Field(
        16, ge=1, le=4096, description="Processes and threads one run may have at once (RLIMIT_NPROC)."
    )
    sandbox_max_open_files: int = Field(64, ge=16, le=1 << 20, description="Open files per process (RLIMIT_NOFILE).")
    sandbox_max_file_mb: int = Field(16, ge=0, le=1 << 20, description="Largest file a run may write, MiB (RLIMIT_FSIZE).")
    sandbox_max_output_bytes: int = Field(
        65536, ge=256, le=1 << 30, description="stdout and stderr are each cut to this many bytes."
    )
    sandbox_max_tmp_mb: int = Field(
        64, ge=1, le=1 << 20, description="Private tmpfs for the working directory and /tmp, MiB (mount namespace)."
    )
    sandbox_require: list[str] = Field(
        default_factory=list,
        description="Protections that must be active or every run fails as sandbox_error, e.g. "
        "['network_namespace', 'separate_uid'] (names: actors.sandbox.PROTECTIONS).",
    )
    sandbox_site_packages: bool = Field(
        False, description="Let sandboxed programs import this environment's site-packages (stdlib only otherwise)."
    )

    @model_validator(mode="after")
    def _check_sandbox(self) -> RewardConfig:
        if self.sandbox == "http" and not self.sandbox_url:
            raise ValueError("sandbox 'http' needs sandbox_url (e.g. http://sandbox:8080), or set sandbox: process")
        if self.sandbox_url is not None and not self.sandbox_url.startswith(("http://", "https://")):
            raise ValueError(f"sandbox_url {self.sandbox_url!r} must start with http:// or https://")
        return self


class LearnerConfig(Section):
    lr: float = Field(1e-5, gt=0, le=1.0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas, each in [0, 1).")
    grad_clip: float = Field(1.0, gt=0, description="Max global gradient norm.")
    warmup_steps: int = Field(0, ge=0)
    inner_updates: int = Field(1, ge=1, description="Optimizer steps per rollout batch (mu).")
    micro_batch_size: int = Field(4, ge=1)
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage.")

    @model_validator(mode="after")
    def _check(self) -> LearnerConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas {self.betas} must each be in [0, 1)")
        return self


class AlgorithmConfig(Section):
    name: Literal["stabledrl", "grpo", "agrpo", "diffu_grpo"] = Field("stabledrl")
    estimator: Literal["elbo", "mean_field", "spg", "agrpo", "staircase_elbo", "uniform_elbo"] = Field(
        "elbo", description="Likelihood / ratio estimator; staircase_elbo needs a block-attention model, "
        "uniform_elbo a uniform-noise one (diffusion_gemma)."
    )
    num_mc_samples: int = Field(2, ge=1, description="Monte Carlo samples K of the likelihood estimate.")
    clip_low: float | None = Field(None, description="Lower clip bound on the ratio, > 0 (None = none).")
    clip_high: float | None = Field(5.0, description="Upper clip bound on the ratio, > 0 (None = none).")
    kl_beta: float = Field(0.0, ge=0.0, description="k3 KL coefficient to the reference model.")
    std_normalize: bool = Field(False, description="Divide advantages by the group std.")
    # Likelihood / ratio estimators (learner/estimators; ALGORITHMS.md section 2).
    coupling: Literal["auto", "independent", "shared", "complementary"] = Field(
        "auto",
        description="Masks of the new vs old policy estimates: independent draws, shared draws (common random "
        "numbers: ratio exactly 1 at theta = theta_old), or complementary pairs m / 1-m (ELBO only, shared). "
        "auto: the estimator's published choice (elbo, spg: independent; mean_field: shared; agrpo: n/a).",
    )
    elbo_weighting: Literal["one_over_t", "mean"] = Field(
        "mean",
        description="ELBO per sample: one_over_t = (1/t) * sum of masked log-probs (the bound); mean = mean "
        "log-prob over the masked tokens (length-normalised, the StableDRL code's choice).",
    )
    t_sampling: Literal["uniform", "stratified"] = Field(
        "uniform", description="ELBO noise levels: t ~ U(0, 1] per sample, or stratified t_k in ((k-1)/K, k/K]."
    )
    prompt_mask_prob: float = Field(
        0.15, ge=0.0, lt=1.0, description="Mean-field (d1): probability of masking each prompt token."
    )
    spg_block_size: int = Field(32, ge=1, description="SPG: completion block length of block-random masking.")
    spg_clean_mask_prob: float = Field(
        0.15, ge=0.0, lt=1.0, description="SPG: probability of masking each prompt token and clean earlier token."
    )
    eubo_beta: float = Field(1.5, gt=0.0, le=10.0, description="SPG: beta of the EUBO (Renyi) upper bound.")
    spg_mix_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="SPG: negative-advantage surrogate = w * EUBO + (1 - w) * ELBO."
    )
    agrpo_num_steps: int = Field(24, ge=1, description="AGRPO: denoising steps k sampled per sequence.")
    agrpo_sampling: Literal["uniform", "entropy"] = Field(
        "uniform",
        description="AGRPO: steps drawn uniformly over the active steps, or by entropy importance sampling "
        "(with unbiasing weights). The per-step factorisation is exact only under random remasking.",
    )
    agrpo_old_logprobs: Literal["cached", "recompute"] = Field(
        "cached",
        description="AGRPO: old log-probs from generation time (cached) or recomputed with the old model.",
    )
    estimator_chunk_rows: int | None = Field(
        None, ge=1, description="Most rows per estimator forward pass (None: all K samples in one pass)."
    )
    staircase_layout: Literal["one_pass", "per_block"] = Field(
        "one_pass",
        description="staircase_elbo (block models; uses num_mc_samples, elbo_weighting, t_sampling, one noise "
        "level per block; coupling auto = independent): one_pass scores every block in one staircase pass; "
        "per_block runs one block-causal pass per block (same values, slower: for checks).",
    )

    # Policy losses, advantages and instability diagnostics (learner/losses, learner/advantages,
    # learner/diagnostics; ALGORITHMS.md section 3). clip_low / clip_high above bound stabledrl's weights
    # (two-sided 1 +- eps: clip_low = 1 - eps, clip_high = 1 + eps); kl_beta is grpo's k3 KL weight.
    grpo_eps: float = Field(
        0.2, gt=0.0, lt=1.0, description="grpo: clip range [1 - eps, 1 + eps] of the conditional PPO clip."
    )
    grpo_level: Literal["token", "sequence"] = Field(
        "token", description="grpo: one ratio per token (averaged 1/|o| per sequence) or one per sequence."
    )
    sequence_reduce: Literal["sum", "mean"] = Field(
        "sum",
        description="Sequence-level losses (stabledrl; grpo at level sequence) given token estimates: l_i = "
        "sum (the log-likelihood) or mean (length-normalised) over the scored tokens.",
    )
    diffu_grpo_eps: float = Field(0.5, gt=0.0, lt=1.0, description="diffu_grpo (d1): token-level clip range.")
    diffu_grpo_kl_beta: float = Field(
        0.04, ge=0.0, description="diffu_grpo (d1): k3 KL weight to the reference model (0: no reference pass)."
    )
    agrpo_eps: float = Field(0.2, gt=0.0, lt=1.0, description="agrpo: clip range of the per-step ratios.")
    bypass_eps: float = Field(
        0.2, gt=0.0, le=10.0,
        description="stabledrl diagnostics: the bypass region is A < 0 and r > 1 + bypass_eps (the PPO-clip "
        "losses use their own eps).",
    )
    leave_one_out: bool = Field(
        False, description="Advantages: r_i minus the mean of the group's other samples (group_size >= 2)."
    )
    drop_zero_variance_groups: bool = Field(
        False, description="Leave out groups whose rewards are all equal (no signal); counted either way."
    )
    spike_factor: float = Field(
        5.0, gt=1.0, le=1e6, description="Gradient spike: pre-clip grad norm > spike_factor x running median."
    )
    spike_window: int = Field(100, ge=1, le=100000, description="Recent grad norms in the running median.")

    @field_validator("clip_low", "clip_high")
    @classmethod
    def _ratio_bound(cls, value: float | None) -> float | None:
        # The loss takes log(clip_low): 0 would only fail when the learner starts, after the workers.
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError("a ratio bound must be positive and finite (e.g. clip_low: 0.8, clip_high: 5.0), "
                             "or null for no bound on that side")
        return value

    @model_validator(mode="after")
    def _check(self) -> AlgorithmConfig:
        if self.clip_low is not None and self.clip_high is not None and self.clip_low >= self.clip_high:
            raise ValueError(f"clip_low ({self.clip_low}) must be below clip_high ({self.clip_high})")
        if self.coupling == "complementary" and self.estimator != "elbo":
            raise ValueError(
                f"coupling 'complementary' needs estimator 'elbo' (got {self.estimator!r}); "
                "use coupling 'shared' or 'independent'"
            )
        if self.estimator == "agrpo" and self.coupling != "auto":
            raise ValueError(
                f"estimator 'agrpo' takes its old log-probs from the trajectory, so coupling must be 'auto' "
                f"(got {self.coupling!r}); choose cached or recomputed old log-probs with agrpo_old_logprobs"
            )
        return self


class ClusterConfig(Section):
    mode: Literal["local", "ray"] = Field("local", description="local: one process; ray: Ray actors.")
    address: str | None = Field(None, description="Ray address to join; None starts a local cluster on 127.0.0.1.")
    num_learner_ranks: int = Field(1, ge=1)
    # Worker groups and the Ray cluster (system/workers, system/ray_cluster.py).
    num_reward_workers: int = Field(
        1, ge=1, le=4096, description="RewardWorker actors (each runs reward.num_workers scoring processes); "
        "the rollout worker count is rollout.num_actors."
    )
    namespace: str = Field(
        "stabledrl", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$",
        description="Ray namespace of this run's actors (letters, digits, _ . -).",
    )
    num_cpus: int | None = Field(
        None, ge=1, le=1_000_000, description="Logical CPUs of a local Ray cluster (None: this machine's cores); "
        "ignored when joining cluster.address."
    )
    num_gpus: int | None = Field(
        None, ge=0, le=1024, description="GPUs of a local Ray cluster (None: detected); ignored when joining."
    )
    object_store_mb: int | None = Field(
        None, ge=64, le=1 << 24, description="Object store of a local Ray cluster, MiB (None: Ray's default)."
    )
    rollout_cpus: float = Field(1.0, ge=0.0, le=1024, description="CPUs per rollout worker actor.")
    rollout_gpus: float = Field(0.0, ge=0.0, le=64, description="GPUs per rollout worker actor (fractions share one).")
    reward_cpus: float = Field(1.0, ge=0.0, le=1024, description="CPUs per reward worker actor.")
    reward_gpus: float = Field(0.0, ge=0.0, le=64, description="GPUs per reward worker actor.")
    learner_cpus: float = Field(1.0, ge=0.0, le=1024, description="CPUs per learner rank.")
    learner_gpus: float = Field(0.0, ge=0.0, le=64, description="GPUs per learner rank (NCCL needs at least 1).")
    rollout_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per rollout worker actor, e.g. {rollout_node: 1}: "
        "only nodes started with `ray start --resources '{\"rollout_node\": N}'` take it (placement by node kind)."
    )
    reward_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per reward worker actor (as rollout_resources)."
    )
    learner_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per learner rank, added to its placement-group "
        "bundle (as rollout_resources)."
    )
    learner_backend: Literal["gloo", "nccl"] = Field(
        "gloo", description="torch.distributed backend of the learner ranks: gloo (CPU) or nccl (GPU)."
    )
    learner_placement: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="Placement-group strategy of the learner ranks' bundles (STRICT_PACK: one node)."
    )
    max_restarts: int = Field(
        3, ge=-1, le=1_000_000, description="Ray restarts of a dead rollout / reward actor (-1: unlimited, 0: "
        "none); learner ranks never restart (a learner failure stops the run)."
    )
    max_task_retries: int = Field(
        3, ge=0, le=1_000_000, description="Times a call whose worker died is re-issued (on the restarted worker, "
        "or on a live one) before it fails; the worker group re-issues, not Ray, so each result comes back once."
    )
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch / OpenMP / MKL threads of each Ray actor, set through its "
        "OMP_NUM_THREADS and MKL_NUM_THREADS (None: Ray's default, the actor's whole CPUs, at least 1). In "
        "sync mode the roles take turns, so on a small machine the rollout and learner actors can each use "
        "every core although their fractional CPUs add up to the machine.",
    )
    startup_timeout_s: float = Field(
        600.0, gt=0, le=86400, description="How long a worker may take to start (or restart) before it is an error."
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, le=600, description="How long to try reaching cluster.address before giving up."
    )
    auth_mode: Literal["token", "disabled"] = Field(
        "token", description="Ray token authentication (RAY_AUTH_MODE): the token comes from RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (a local cluster creates one)."
    )

    @model_validator(mode="after")
    def _check_cluster(self) -> ClusterConfig:
        if self.learner_backend == "nccl" and self.learner_gpus < 1:
            raise ValueError(f"learner_backend 'nccl' needs learner_gpus >= 1 per rank (got {self.learner_gpus}); "
                             "set learner_gpus: 1, or learner_backend: gloo on CPU")
        for role in ("rollout", "reward", "learner"):
            for key, amount in getattr(self, f"{role}_resources").items():
                if key in ("CPU", "GPU", "memory", "object_store_memory") or amount <= 0:
                    raise ValueError(f"{role}_resources {{{key}: {amount}}}: give custom resource names with amounts "
                                     f"> 0; CPUs and GPUs are {role}_cpus / {role}_gpus")
        if self.learner_cpus <= 0 and self.learner_gpus <= 0:
            raise ValueError("learner_cpus and learner_gpus are both 0: a learner rank needs a CPU or a GPU")
        if self.address is not None:
            addr = self.address.strip()
            if addr.startswith(("http://", "https://")):
                raise ValueError(f"address {addr!r} is a dashboard (job submission) URL; cluster.address takes "
                                 "the GCS address host:port (e.g. 127.0.0.1:6379), 'auto' or ray://host:10001")
            host, sep, port = addr.removeprefix("ray://").rpartition(":")
            if addr != "auto" and not (sep and host and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"address {addr!r} must be host:port (e.g. 127.0.0.1:6379), 'auto' or "
                                 "ray://host:port")
        return self


class LoggingConfig(Section):
    wandb_mode: Literal["disabled", "offline", "online"] = Field("disabled")
    project: str = Field("stabledrl")
    entity: str | None = None
    run_name: str | None = None
    tags: list[str] = Field(default_factory=list)
    log_every: int = Field(10, ge=1, description="Steps between log lines.")
    progress: bool = Field(True, description="Show progress bars (plain lines when not a terminal).")
    # Metrics, wandb, samples, histograms and the KL-drift probe (system/monitoring).
    dir: str | None = Field(
        None, description="Directory wandb writes under (as DIR/wandb); None: the run directory."
    )
    table_every: int = Field(
        50, ge=0, le=1_000_000, description="Log a table of sample completions every n steps (0: never); tables "
        "every step slow training, so keep it sparse."
    )
    table_rows: int = Field(8, ge=1, le=10_000, description="Sample completions per table at most.")
    table_max_chars: int = Field(
        2000, ge=16, le=1_000_000, description="Longer sample texts are cut to this many characters."
    )
    histogram_every: int = Field(
        10, ge=0, le=1_000_000, description="Log histograms (ratios, advantages, rewards) every n steps (0: never)."
    )
    histogram_bins: int = Field(32, ge=2, le=512, description="Bins per histogram.")
    publish_dashboard: bool = Field(
        True, description="wandb online: save the reward-collapse dashboard as a workspace view of the project "
        "at start (needs the wandb-workspaces package; a failure is a warning, never a stopped run)."
    )
    kl_probe_size: int = Field(
        8, ge=0, le=4096, description="KL drift probe: fixed sequences whose masked-token distributions are "
        "compared with the initial policy's (0: no probe)."
    )
    kl_probe_every: int = Field(10, ge=1, le=1_000_000, description="KL drift probe: measure every n steps.")
    kl_probe_mask_ratio: float = Field(
        0.5, gt=0.0, le=1.0, description="KL drift probe: share of completion tokens masked (fixed once, by "
        "kl_probe_seed; at least one per sequence)."
    )
    kl_probe_samples: int = Field(
        8, ge=1, le=100_000, description="KL drift probe: tokens drawn per masked position from the initial "
        "policy (the fixed samples of the k3 estimate of KL(initial || current))."
    )
    kl_probe_seed: int = Field(0, description="KL drift probe: seed of the fixed mask and the fixed samples.")


class SFTConfig(Section):
    """Masked-diffusion supervised fine-tuning (loss on completion tokens only)."""

    steps: int = Field(500, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    loss_weighting: Literal["elbo", "mean"] = Field(
        "elbo", description="elbo: 1/t-weighted sum per sequence (the bound); mean: per-token mean over masked."
    )
    wrong_demos: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of the training demonstrations written wrong by a careless "
        "annotator (sudoku; learner/demonstrations.py): the imperfect start RL with the exact verifier improves past."
    )
    wrong_demo_kind: Literal["shift", "random", "blank"] = Field(
        "shift", description="How a wrong demonstration is wrong: shift = every blank cell one digit too high (a "
        "consistent convention); random = every blank cell a random other digit; blank = the puzzle handed back "
        "unsolved (blank cells left 0)."
    )
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    eval_examples: int = Field(64, ge=0, description="Test examples decoded after training (0: skip).")
    block_staircase: bool = Field(
        False, description="Block-attention models: one staircase pass with an independent noise level per "
        "block (each block conditioned on the clean earlier blocks, as generation sees them) instead of one "
        "level for the whole completion; needs model.tiny.attention: block or a block checkpoint."
    )


MonitorAction = Literal["alert", "stop", "rollback"]


class MonitorConfig(Section):
    """The collapse monitor (system/monitoring/monitor.py): detectors over each RL step's metrics, and what
    a firing does. alert: a wandb alert and a log line; stop: checkpoint, then exit non-zero with the
    reason; rollback: restore the last good checkpoint (saved at a step where no detector was in alarm),
    scale the learning rate by rollback_lr_scale and continue (a stop when there is no good checkpoint,
    or after max_rollbacks). A detector's own action, when set, overrides ``action``."""

    enabled: bool = Field(True, description="Run the detectors (metrics are logged either way).")
    action: MonitorAction = Field("alert", description="What a firing does, for detectors without their own action.")
    reward_key: str = Field(
        "rollout/reward_mean", min_length=1, description="Reward collapse: the metric watched (canonical name)."
    )
    reward_window: int = Field(
        10, ge=1, le=100_000, description="Reward collapse: steps in the moving average (the detector arms once "
        "it has this many)."
    )
    reward_drop: float | None = Field(
        0.2, gt=0.0, description="Reward collapse: fires when the moving average falls more than this below its "
        "running best (absolute, in reward units); re-arms after recovering to within half of it. None: off."
    )
    reward_action: MonitorAction | None = Field(None, description="Reward collapse: action (None: action).")
    grad_spike_factor: float | None = Field(
        10.0, gt=1.0, le=1e9, description="Gradient spike: fires when grad/pre_clip_norm exceeds this times the "
        "rolling median of earlier steps' norms. None: off."
    )
    grad_spike_window: int = Field(50, ge=1, le=100_000, description="Gradient spike: norms in the rolling median.")
    grad_spike_min_history: int = Field(
        10, ge=1, le=100_000, description="Gradient spike: norms recorded before the detector arms (<= window)."
    )
    grad_spike_action: MonitorAction | None = Field(None, description="Gradient spike: action (None: action).")
    ratio_max: float | None = Field(
        1e4, gt=1.0, description="Ratio blow-up: fires when ratio/max (the largest estimated ratio) exceeds this. "
        "None: off."
    )
    log_ratio_std_max: float | None = Field(
        5.0, gt=0.0, description="Ratio blow-up: fires when ratio/log_std (the log-ratio noise) exceeds this. "
        "None: off."
    )
    ratio_action: MonitorAction | None = Field(None, description="Ratio blow-up: action (None: action).")
    nonfinite: bool = Field(True, description="Fire when any metric is NaN or infinite.")
    nonfinite_ignore: list[str] = Field(
        default_factory=list, description="Metric names (fnmatch patterns, e.g. 'kl/*') the NaN check skips."
    )
    nonfinite_action: MonitorAction = Field(
        "rollback", description="NaN / inf: action (rollback; a stop when no good checkpoint exists)."
    )
    rollback_lr_scale: float = Field(
        0.5, gt=0.0, le=1.0, description="Rollback: multiply the learning rate by this (1: keep it)."
    )
    max_rollbacks: int = Field(
        3, ge=0, le=1000, description="Rollbacks allowed in a run; a rollback past this many is a stop."
    )

    @model_validator(mode="after")
    def _check_monitor(self) -> MonitorConfig:
        if self.grad_spike_min_history > self.grad_spike_window:
            raise ValueError(f"grad_spike_min_history ({self.grad_spike_min_history}) must be at most "
                             f"grad_spike_window ({self.grad_spike_window}); lower it or widen the window")
        return self


class Config(Section):
    """A whole run."""

    seed: int = Field(0, description="Seed for model init, data order and sampling.")
    output_dir: str = Field("runs/default", description="Run directory: checkpoints, metrics, resolved config.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @model_validator(mode="after")
    def _check_decoder_truth(self) -> Config:
        # An approximate cache samples from a distribution that is not the policy's, so the log-probs it
        # records are not log pi_old: AGRPO's cached old log-probs would be wrong (issue 18).
        algo = self.algorithm
        if self.decoding.cache != "none" and algo.estimator == "agrpo" and algo.agrpo_old_logprobs == "cached":
            raise ValueError(
                f"decoding.cache '{self.decoding.cache}' is an approximate KV cache: the log-probs it records are "
                "not the policy's, so AGRPO's cached old log-probs would be wrong; set "
                "algorithm.agrpo_old_logprobs: recompute, or decoding.cache: none"
            )
        return self


# --------------------------------------------------------------------------- loading


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at the parent of ``loc`` (for unknown-key messages)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def format_validation_error(err: ValidationError, source: str) -> str:
    """``invalid configuration (SOURCE): key.path = value: what is wrong and the fix``, one line for one
    error, one line per error under the header for several."""
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-after"))
        path = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            lines.append(f"  {path}: unknown key (value {e['input']!r}); allowed keys here: {', '.join(allowed)}")
        else:
            value = e.get("input")
            msg = e["msg"].removeprefix("Value error, ")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"  {path}{shown}: {msg}")
    return " ".join(line.strip() for line in lines) if len(lines) == 2 else "\n".join(lines)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, resolving ``include:`` (a path or list of paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: include cycle through {[str(p) for p in _seen]}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    includes = data.pop("include", None) or []
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: 'include' must be a file path or a list of paths, got {includes!r}")
    merged: dict = {}
    for inc in includes:
        merged = _deep_merge(merged, read_yaml(path.parent / inc, (*_seen, path.resolve())))
    return _deep_merge(merged, data)


def apply_override(data: dict, assignment: str) -> dict:
    """Apply one ``section.key=value`` override; the value is parsed as YAML (``3``, ``true``, ``[1, 2]``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({e})") from e
    out = dict(data)
    node = out
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value
    return out


def build_config(data: dict, source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data = read_yaml(path) if path is not None else {}
    for assignment in overrides or []:
        data = apply_override(data, assignment)
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += " with --set " + " ".join(overrides)
    return build_config(data, source)


def dump_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run really used)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
