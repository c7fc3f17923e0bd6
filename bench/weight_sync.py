"""Weight-sync speed of every transport, beside this machine's memory bandwidth.

For each transport, state-dict size (fp32 tensors shaped like a hidden-2048 / MLP-5632 transformer layer:
16 and 44 MiB matrices, 8 KiB norms) and number of receivers, the time from the start of ``publish`` until
the LAST receiver has the verified state (``receive`` returned, checksum checked), and the GB/s that makes
(state bytes / that time; GB = 1e9 bytes). Receivers run where they would in the system: in the same
process (inprocess), as Ray actors (ray), as spawned processes (broadcast over gloo on 127.0.0.1;
filesystem, reading what the publisher wrote with fsync to ``--dir``). One warm-up round, then the median
of ``--repeats``. ``memcpy_GBps`` copies a state-sized tensor into an allocated one (bytes copied / s);
``alloc_copy_GBps`` clones it (fresh pages: what a receiver that allocates its output pays).

    python bench/weight_sync.py [--sizes 50,500] [--transports inprocess,ray,broadcast,filesystem]
                                [--receivers 1,2] [--repeats 3] [--bucket-mb 64] [--dir DIR] [--quick]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from system.transports import TransportOptions, build_transport
from system.transports.filesystem import FilesystemTransport

MB = 10**6
LAYER = [("q", (2048, 2048)), ("k", (2048, 2048)), ("v", (2048, 2048)), ("o", (2048, 2048)),
         ("gate", (5632, 2048)), ("up", (5632, 2048)), ("down", (2048, 5632)),
         ("attn_norm", (2048,)), ("mlp_norm", (2048,))]


def make_state(total_bytes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 tensors of layer shapes, repeated until ``total_bytes`` (the last one cut to fit exactly)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    left, index = total_bytes // 4, 0
    while left > 0:
        name, shape = LAYER[index % len(LAYER)]
        if math.prod(shape) > left:  # the last tensor: as many whole rows as fit, else a vector
            shape = (left // shape[-1], shape[-1]) if len(shape) == 2 and left >= shape[-1] else (left,)
        key = f"layers.{index // len(LAYER)}.{name}"
        state[key] = torch.empty(shape).normal_(generator=gen)
        left -= state[key].numel()
        index += 1
    return state


def memory_bandwidth(nbytes: int) -> tuple[float, float]:
    """(memcpy GB/s into allocated memory, clone GB/s into fresh memory), best of 3."""
    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)
    copy, clone = [], []
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src)
        copy.append(time.perf_counter() - start)
        start = time.perf_counter()
        fresh = src.clone()
        clone.append(time.perf_counter() - start)
        del fresh
    return nbytes / min(copy) / 1e9, nbytes / min(clone) / 1e9


def _summary(seconds: list[float], publish: list[float], nbytes: int) -> dict[str, float]:
    median = statistics.median(seconds)
    return {"seconds": round(median, 4), "GBps": round(nbytes / median / 1e9, 3),
            "publish_s": round(statistics.median(publish), 4), "rounds": len(seconds)}


# ---------------------------------------------------------------------------------------------- inprocess


def bench_inprocess(state: dict[str, torch.Tensor], receivers: int, repeats: int, _: argparse.Namespace) -> dict:
    transport = build_transport(TransportOptions(kind="inprocess"))
    seconds, publish = [], []
    for round_ in range(repeats + 1):
        start = time.time()
        transport.publish(state, round_ + 1)
        published = time.time()
        for _ in range(receivers):
            received, version = transport.receive(min_version=round_ + 1)
            assert version.version == round_ + 1 and len(received) == len(state)
        if round_:
            seconds.append(time.time() - start)
            publish.append(published - start)
    return _summary(seconds, publish, _nbytes(state))


# -------------------------------------------------------------------------------------------------- Ray


class _RayReceiver:
    def __init__(self, transport) -> None:  # type: ignore[no-untyped-def]
        torch.set_num_threads(1)
        self.transport = transport

    def ready(self) -> bool:
        return True

    def receive(self, min_version: int) -> tuple[float, int]:
        state, version = self.transport.receive(min_version=min_version)
        done = time.time()
        del state
        return done, version.version


def bench_ray(state: dict[str, torch.Tensor], receivers: int, repeats: int, args: argparse.Namespace) -> dict:
    import ray

    transport = build_transport(TransportOptions(kind="ray", ray_actor_name=f"bench-weights-{_nbytes(state)}-{receivers}"))
    actors = [ray.remote(num_cpus=0)(_RayReceiver).remote(transport) for _ in range(receivers)]
    ray.get([actor.ready.remote() for actor in actors])
    seconds, publish = [], []
    for round_ in range(repeats + 1):
        pending = [actor.receive.remote(round_ + 1) for actor in actors]
        time.sleep(0.3)  # let the receivers reach the registry and wait there
        start = time.time()
        transport.publish(state, round_ + 1)
        published = time.time()
        done = ray.get(pending)
        assert all(version == round_ + 1 for _, version in done)
        if round_:
            seconds.append(max(t for t, _ in done) - start)
            publish.append(published - start)
    for actor in actors:
        ray.kill(actor)
    transport.close()
    return _summary(seconds, publish, _nbytes(state))


# ---------------------------------------------------------------------------- spawned processes (broadcast, fs)


def _rank_main(rank: int, kind: str, nbytes: int, receivers: int, repeats: int, args: argparse.Namespace,
               port: int, results, barrier) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    if kind == "broadcast":
        options = TransportOptions(kind="broadcast", init_method=f"tcp://127.0.0.1:{port}",
                                   num_receivers=receivers, bucket_mb=args.bucket_mb)
        transport = build_transport(options, rank)
    else:
        transport = FilesystemTransport(args.dir, keep_last=2)
    state = make_state(nbytes) if rank == 0 else None
    for round_ in range(repeats + 1):
        barrier.wait()
        if rank == 0:
            start = time.time()
            transport.publish(state, round_ + 1)
            results.put((round_, "sent", start, time.time()))
        else:
            received, version = transport.receive(min_version=round_ + 1)
            results.put((round_, "received", time.time(), version.version))
            del received
    barrier.wait()
    transport.close()


def bench_processes(kind: str, nbytes: int, receivers: int, repeats: int, args: argparse.Namespace) -> dict:
    context = mp.get_context("spawn")
    results, barrier = context.SimpleQueue(), context.Barrier(1 + receivers)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if kind == "filesystem":
        args.dir = tempfile.mkdtemp(prefix="weight-sync-", dir=args.dir_root)
    try:
        mp.spawn(_rank_main, args=(kind, nbytes, receivers, repeats, args, port, results, barrier),
                 nprocs=1 + receivers, join=True)
    finally:
        if kind == "filesystem":
            shutil.rmtree(args.dir, ignore_errors=True)
    rows = [results.get() for _ in range((repeats + 1) * (1 + receivers))]
    seconds, publish = [], []
    for round_ in range(1, repeats + 1):
        sent = next(row for row in rows if row[0] == round_ and row[1] == "sent")
        done = [row for row in rows if row[0] == round_ and row[1] == "received"]
        assert len(done) == receivers and all(row[3] == round_ + 1 for row in done)
        seconds.append(max(row[2] for row in done) - sent[2])
        publish.append(sent[3] - sent[2])
    return _summary(seconds, publish, nbytes)


def _nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


@contextlib.contextmanager
def _ray_cluster(largest: int):  # type: ignore[no-untyped-def]
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=max(3 * largest, 500 * MB), log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    try:
        yield
    finally:
        ray.shutdown()


def _run_all(sizes: list[int], kinds: list[str], counts: list[int], args: argparse.Namespace,
             results: dict) -> None:
    for nbytes in sizes:
        state = make_state(nbytes) if {"inprocess", "ray"} & set(kinds) else {}
        for kind in kinds:
            for count in counts:
                if kind == "inprocess":
                    row = bench_inprocess(state, count, args.repeats, args)
                elif kind == "ray":
                    row = bench_ray(state, count, args.repeats, args)
                else:
                    row = bench_processes(kind, nbytes, count, args.repeats, args)
                results.setdefault(kind, {}).setdefault(f"{nbytes // MB}MB", {})[f"{count}_receivers"] = row
                print(f"{kind:>10} {nbytes // MB:>4} MB x{count}: {row}", file=sys.stderr)
        del state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,500", help="state-dict sizes in MB (1e6 bytes)")
    parser.add_argument("--transports", default="inprocess,ray,broadcast,filesystem")
    parser.add_argument("--receivers", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=64.0, help="broadcast bucket size in MiB")
    parser.add_argument("--dir", dest="dir_root", default=None, help="where the filesystem transport writes")
    parser.add_argument("--quick", action="store_true", help="50 MB only, 1 timed round")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = "50", 1
    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]
    kinds = args.transports.split(",")
    unknown = set(kinds) - {"inprocess", "ray", "broadcast", "filesystem"}
    if unknown:
        parser.error(f"unknown transports {sorted(unknown)}; choose from inprocess, ray, broadcast, filesystem")
    counts = [int(r) for r in args.receivers.split(",")]
    torch.set_num_threads(1)
    memcpy, alloc_copy = memory_bandwidth(max(sizes))
    print(f"memcpy {memcpy:.2f} GB/s, clone {alloc_copy:.2f} GB/s ({max(sizes) / MB:.0f} MB)", file=sys.stderr)
    results: dict[str, dict[str, dict[str, dict]]] = {}
    with contextlib.ExitStack() as stack:
        if "ray" in kinds:
            stack.enter_context(_ray_cluster(max(sizes)))
        _run_all(sizes, kinds, counts, args, results)
    print(json.dumps({
        "bench": "weight_sync", "GB": "1e9 bytes", "memcpy_GBps": round(memcpy, 3),
        "alloc_copy_GBps": round(alloc_copy, 3), "bucket_mb": args.bucket_mb, "repeats": args.repeats,
        "filesystem_fsync": True, "threads_per_process": 1, "torch": torch.__version__, "results": results,
    }))


if __name__ == "__main__":
    main()
