"""A discrete-event model of the RL loop at cluster scale (issue 22): rollout actors, the learner and the
weight sync, with measured per-phase costs as input, predicting steps per hour of ``sync``, ``async``
(one step off-policy) and ``stream`` (system/stream.py) from 8 to 512 GPUs.

    python bench/stream_sim.py [--gpus 8 16 32 64] [--decode-s 11.2] [--decode-cv 0.3] ...
    python bench/stream_sim.py --check SYNC_RUN STREAM_RUN   # the model against two measured runs

The model. A group is one decode call of G rows on one rollout GPU; its time is ``decode_s`` times a
lognormal factor of mean 1 and coefficient of variation ``decode_cv`` (early stops make groups
unequal; a batch waits for its slowest group, a stream does not). The learner's step on M GPUs
(data-parallel, whole groups per GPU) costs ceil(P / M) x ``group_train_s`` + ``allreduce_s`` per
inner update, where ``group_train_s`` is K old-policy forwards plus K forward + backward passes of one
group (the H200 figures: forward of 8 x 320 tokens 84 ms, forward + backward 254 ms). A weight sync
costs ``sync_s``.

* sync: every GPU generates (a GPU takes the next group when free), then every GPU trains, then the
  weights are reloaded in place (``colocated_sync_s``).
* async: N rollout GPUs and M learner GPUs; batch k+1 is generated while the learner trains on batch k
  (one step off); generation pauses for the weight sync.
* stream: N actors generate continuously, at most ``capacity`` groups in flight or buffered; the
  learner starts a step when P groups at most ``max_staleness`` versions old are there; no prompt is
  issued whose group would be too stale by then (the stream's gate); an actor swaps weights in before its
  next group (``swap_s`` of its time).

For async and stream every split N + M of the GPUs is tried and the fastest is reported. The last stdout
line is one JSON object: inputs, and per GPU count and mode the split, steps/hour, speed-up over sync,
actor and learner idle fractions, and (stream) the staleness histogram and dropped fraction.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Costs:
    """Per-phase seconds (defaults: LLaDA-8B shape on one H200, README's GPU section)."""

    decode_s: float = 11.2  # one group: L = 256, 128 steps, 8 rows
    decode_cv: float = 0.3  # spread of a group's decode time (early stops)
    forward_s: float = 0.084  # 8 x 320 tokens
    fwd_bwd_s: float = 0.254
    mc_samples: int = 2  # K of the ELBO estimator
    inner_updates: int = 1  # mu
    allreduce_s: float = 0.3  # gradient all-reduce per inner update (ZeRO, 8B bf16)
    sync_s: float = 2.0  # learner -> rollout GPUs weight broadcast
    colocated_sync_s: float = 0.5  # reloading the weights in place (sync mode)
    swap_s: float = 0.5  # an actor loading a new version between groups (stream)
    groups_per_gpu: int = 4  # P = groups_per_gpu x GPUs (the batch grows with the cluster)
    max_staleness: int = 1
    steps: int = 20

    @property
    def group_train_s(self) -> float:
        return self.inner_updates * self.mc_samples * (self.forward_s + self.fwd_bwd_s)

    def train_s(self, groups: int, gpus: int) -> float:
        return math.ceil(groups / gpus) * self.group_train_s + self.inner_updates * self.allreduce_s


def decode_times(costs: Costs, rng: random.Random, n: int) -> list[float]:
    """``n`` group decode times: lognormal with mean ``decode_s`` and the given coefficient of variation."""
    sigma = math.sqrt(math.log1p(costs.decode_cv ** 2))
    return [costs.decode_s * rng.lognormvariate(-sigma * sigma / 2, sigma) for _ in range(n)]


def makespan(times: list[float], gpus: int) -> tuple[float, float]:
    """Greedy list scheduling of the groups on ``gpus``: (finish time, busy GPU-seconds)."""
    free = [0.0] * gpus
    for t in times:
        heapq.heapreplace(free, free[0] + t)
    return max(free), sum(times)


def run_sync(costs: Costs, gpus: int, rng: random.Random) -> dict[str, float]:
    p = costs.groups_per_gpu * gpus
    total = gen_busy = train_busy = 0.0
    for _ in range(costs.steps):
        gen, busy = makespan(decode_times(costs, rng, p), gpus)
        train = costs.train_s(p, gpus)
        total += gen + train + costs.colocated_sync_s
        gen_busy, train_busy = gen_busy + busy, train_busy + train * gpus
    return {"seconds_per_step": total / costs.steps, "actor_idle": 1 - gen_busy / (total * gpus),
            "learner_idle": 1 - train_busy / (total * gpus), "split": f"{gpus} shared"}


def run_async(costs: Costs, n: int, m: int, rng: random.Random) -> dict[str, float]:
    """One step off: generation of batch k+1 (weights of step k-1) overlaps training on batch k."""
    p = costs.groups_per_gpu * (n + m)
    gen_done = train_done = published = gen_busy = 0.0
    train = costs.train_s(p, m)
    for _ in range(costs.steps):
        gen_start = max(gen_done, published)  # generation pauses for the weight sync
        span, busy = makespan(decode_times(costs, rng, p), n)
        gen_done = gen_start + span
        train_done = max(gen_done, train_done) + train
        published = train_done + costs.sync_s
        gen_busy += busy
    total = published
    return {"seconds_per_step": total / costs.steps, "actor_idle": 1 - gen_busy / (total * n),
            "learner_idle": 1 - costs.steps * train / total, "split": f"{n} rollout + {m} learner"}


def run_stream(costs: Costs, n: int, m: int, rng: random.Random, capacity: int | None = None) -> dict:
    """Actors generate continuously; the learner takes P admissible groups as soon as they are there."""
    p = costs.groups_per_gpu * (n + m)
    capacity = capacity or 2 * p
    train = costs.train_s(p, m)
    events: list[tuple[float, int, str, int]] = []  # (time, tie-break, kind, actor or version)
    tick = 0
    buffer: list[int] = []  # versions of the scored groups, oldest first
    in_flight, version, published, steps, now = 0, 0, 0, 0, 0.0
    learner_busy, actor_busy, dropped = 0.0, 0.0, 0
    actor_version = [0] * n
    idle_actors = list(range(n))
    lags: dict[int, int] = {}
    training = publishing = False

    def push(t: float, kind: str, who: int) -> None:
        nonlocal tick
        tick += 1
        heapq.heappush(events, (t, tick, kind, who))

    def start_actors() -> None:
        nonlocal in_flight, actor_busy
        # the stream's admission gate (system/stream.py, Stream.fresh_enough): no group that would be too stale
        while idle_actors and in_flight + len(buffer) < capacity and \
                version + int(training) + (in_flight + len(buffer)) // p - published <= costs.max_staleness:
            a = idle_actors.pop()
            cost = decode_times(costs, rng, 1)[0] + (costs.swap_s if actor_version[a] < published else 0.0)
            actor_version[a] = published
            in_flight += 1
            actor_busy += cost
            push(now + cost, "group", a)

    def start_learner() -> None:
        nonlocal training, learner_busy, dropped
        fresh = [v for v in buffer if version - v <= costs.max_staleness]
        dropped += len(buffer) - len(fresh)
        buffer[:] = fresh
        if training or publishing or len(buffer) < p:
            return
        batch, buffer[:] = buffer[:p], buffer[p:]
        for v in batch:
            lags[version - v] = lags.get(version - v, 0) + 1
        training = True
        learner_busy += train
        push(now + train, "trained", 0)

    start_actors()
    while steps < costs.steps:
        now, _, kind, who = heapq.heappop(events)
        if kind == "group":
            in_flight -= 1
            buffer.append(actor_version[who])
            idle_actors.append(who)
        elif kind == "trained":  # the learner sends the weights (actors keep going), then takes a batch
            version, steps, training, publishing = version + 1, steps + 1, False, True
            push(now + costs.sync_s, "published", version)
        elif kind == "published":
            published, publishing = max(published, who), False
        start_learner()
        start_actors()
    total = now
    return {"seconds_per_step": total / costs.steps, "actor_idle": max(0.0, 1 - actor_busy / (total * n)),
            "learner_idle": 1 - learner_busy / total, "split": f"{n} rollout + {m} learner",
            "staleness": {str(k): lags[k] for k in sorted(lags)}, "dropped_fraction": dropped / max(1, dropped + p * steps)}


def learner_counts(gpus: int, points: int = 16) -> list[int]:
    """Learner GPU counts to try: every one up to 16 GPUs, else a geometric grid from 1 to half."""
    if gpus <= 16:
        return list(range(1, gpus))
    return sorted({max(1, round((gpus / 2) ** (i / (points - 1)))) for i in range(points)})


def best_split(costs: Costs, gpus: int, mode: str, seed: int) -> dict:
    """The fastest N + M split of ``gpus`` for a disaggregated mode (same random draws for every split)."""
    runner = run_async if mode == "async" else run_stream
    results = [runner(costs, gpus - m, m, random.Random(seed)) for m in learner_counts(gpus)]
    return min(results, key=lambda r: r["seconds_per_step"])


def predict(costs: Costs, gpu_counts: list[int], seed: int) -> dict:
    out = {}
    for gpus in gpu_counts:
        sync = run_sync(costs, gpus, random.Random(seed))
        row = {"sync": sync, "async": best_split(costs, gpus, "async", seed),
               "stream": best_split(costs, gpus, "stream", seed)}
        for r in row.values():
            r["steps_per_hour"] = round(3600 / r["seconds_per_step"], 2)
            r["speedup_over_sync"] = round(sync["seconds_per_step"] / r["seconds_per_step"], 3)
            for key in ("seconds_per_step", "actor_idle", "learner_idle", "dropped_fraction"):
                if key in r:
                    r[key] = round(r[key], 3)
        out[str(gpus)] = row
    return out


def _records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("type") == "metrics"][1:]  # step 1 carries start-up


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in rows)


def check(sync_run: Path, stream_run: Path, seed: int) -> dict:
    """The model against two measured runs with one rollout actor and one learner: each run's own
    per-phase costs (medians over steps: a shared machine's noise is in the means) as input, its step
    time and idle fractions predicted and measured. Sync: generation, learning and the weight sync one
    after the other. Stream: ``run_stream`` with one actor and one learner."""
    sync, stream = _records(sync_run), _records(stream_run)
    groups = int(sync[0]["rollout/groups"])
    gen, learn, step = (_median(sync, k) for k in ("timing/generation", "timing/learner", "timing/step"))
    sync_pred = {"seconds_per_step": gen + learn + _median(sync, "timing/sync"),
                 "actor_idle": 1 - gen / step, "learner_idle": 1 - learn / step}
    per_group = [r["stream/group_decode_s"] for r in stream]
    mean = statistics.median(per_group)
    costs = Costs(decode_s=mean, decode_cv=statistics.pstdev(per_group) / statistics.fmean(per_group), forward_s=0.0,
                  fwd_bwd_s=_median(stream, "timing/learner") / groups, mc_samples=1, allreduce_s=0.0,
                  sync_s=_median(stream, "timing/sync"), swap_s=0.0, groups_per_gpu=groups // 2, steps=200)
    predicted = run_stream(costs, 1, 1, random.Random(seed), capacity=2 * groups)
    measured = {"seconds_per_step": _median(stream, "timing/step"),
                "actor_idle": _median(stream, "stream/actor_idle_fraction"),
                "learner_idle": _median(stream, "stream/learner_idle_fraction")}
    rnd = lambda d: {k: round(v, 3) for k, v in d.items()}  # noqa: E731
    return {"sync": {"inputs": rnd({"generation_s": gen, "learner_s": learn}), "predicted_step_s":
                     round(sync_pred["seconds_per_step"], 3), "measured": rnd({"seconds_per_step": step,
                     "actor_idle": sync_pred["actor_idle"], "learner_idle": sync_pred["learner_idle"]})},
            "stream": {"inputs": rnd({"decode_s_per_group": mean, "decode_cv": costs.decode_cv,
                                      "learner_s": _median(stream, "timing/learner"), "sync_s": costs.sync_s}),
                       "predicted": rnd({k: predicted[k] for k in measured}), "measured": rnd(measured)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", nargs=2, type=Path, metavar=("SYNC_RUN", "STREAM_RUN"))
    for name, value in asdict(Costs()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    if args.check:
        print(json.dumps(check(*args.check, seed=args.seed)))
        return
    costs = Costs(**{name: getattr(args, name) for name in asdict(Costs())})
    print(f"simulating {costs.steps} steps at {args.gpus} GPUs", file=sys.stderr)
    print(json.dumps({"inputs": asdict(costs), "group_train_s": costs.group_train_s,
                      "predictions": predict(costs, args.gpus, args.seed)}))


if __name__ == "__main__":
    main()
