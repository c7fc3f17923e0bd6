"""Weight transports: every transport delivers bit-identical tensors (fp32 with NaN and -0.0, bf16, int64,
bool, 0-d, empty) with the right version and checksum, the latest of two versions, and raises on a
corrupted payload and on a timeout. In-process: snapshot immunity. Filesystem: atomic publish (crash
injection and a concurrent reader), pruning. torch.distributed: 1 sender + 2 receiver processes on gloo,
many buckets. Ray: a real local cluster with two receiver actors."""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
import threading
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import xxhash

from system.transports import (
    TransportOptions,
    WeightSyncError,
    WeightSyncTimeout,
    build_transport,
    state_checksum,
)
from system.transports.base import byte_view, layout_from_json, layout_to_json, plan_layout
from system.transports.broadcast import BroadcastTransport
from system.transports.filesystem import POINTER, FilesystemTransport, version_file
from system.types import WeightVersion


def make_state(seed: int, rows: int = 16) -> dict[str, torch.Tensor]:
    """fp32 (with NaN and -0.0, whose bits equality-by-value would miss), bf16, int64, bool, 0-d, empty."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, 24, generator=gen)
    weight[0, 0], weight[0, 1] = float("nan"), -0.0
    return {
        "layers.0.weight": weight,
        "layers.0.norm": torch.randn(24, generator=gen).to(torch.bfloat16),
        "position_ids": torch.randint(-(2**40), 2**40, (3, 5), generator=gen),
        "mask": torch.rand(7, generator=gen) > 0.5,
        "scale": torch.tensor(float(seed)),
        "empty": torch.empty(0, 4),
    }


def assert_identical(received: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(received) == list(expected)
    for name, tensor in expected.items():
        got = received[name]
        assert (got.dtype, got.shape) == (tensor.dtype, tensor.shape), name
        assert torch.equal(byte_view(got), byte_view(tensor)), f"{name} differs in its bytes"


# -------------------------------------------------------------------------------------------- shared parts


def test_checksum_matches_a_hand_built_byte_stream() -> None:
    state = {"b": torch.tensor([1.0, 2.0]), "a": torch.tensor([3], dtype=torch.int16)}
    # sorted names: "a" then "b"; each: JSON [name, dtype, shape] then the little-endian bytes
    stream = b'["a", "int16", [1]]' + struct.pack("<h", 3) + b'["b", "float32", [2]]' + struct.pack("<2f", 1.0, 2.0)
    assert state_checksum(state) == "xxh3_128:" + xxhash.xxh3_128(stream).hexdigest()


def test_checksum_sees_bytes_names_shapes_and_dtypes() -> None:
    state = make_state(1)  # scale = 1.0, so both 0.0 and -0.0 below are changes
    base = state_checksum(state)
    assert state_checksum(dict(reversed(list(state.items())))) == base  # insertion order does not matter
    flipped = dict(state, **{"layers.0.norm": state["layers.0.norm"].clone()})
    flipped["layers.0.norm"].view(torch.int16)[3] ^= 1  # one bit of one bf16 value
    renamed = {("x" if k == "scale" else k): v for k, v in state.items()}
    reshaped = dict(state, position_ids=state["position_ids"].reshape(5, 3))
    retyped = dict(state, **{"layers.0.norm": state["layers.0.norm"].view(torch.int16)})  # same bytes
    zero = dict(state, scale=torch.tensor(0.0))
    negzero = dict(state, scale=torch.tensor(-0.0))
    variants = [flipped, renamed, reshaped, retyped, zero, negzero]
    assert len({base, *map(state_checksum, variants)}) == 1 + len(variants)


def test_layout_aligns_every_tensor_and_rejects_inconsistent_metadata() -> None:
    state = {"a": torch.zeros(3), "b": torch.zeros(5, dtype=torch.bfloat16), "c": torch.zeros(1, dtype=torch.int64)}
    metas, total = plan_layout(state)
    # a: 3*4 = 12 bytes at 0; b: 5*2 = 10 bytes at 64 (next multiple of 64); c: 8 bytes at 128; end 136
    assert [(m.offset, m.nbytes) for m in metas] == [(0, 12), (64, 10), (128, 8)] and total == 136
    parsed, parsed_total, extra = layout_from_json(layout_to_json(metas, total, {"version": 4}), "t")
    assert parsed == metas and parsed_total == 136 and extra == {"version": 4}
    good = ["a", "float32", [3], 0, 12]
    for row in (["a", "float32", [3], 0, 16], ["a", "float32", [3], 130, 12], ["a", "float32", [3], 2, 12],
                ["a", "complex7", [3], 0, 12], ["a", "float32", [-3], 0, -12], ["a", "float32"]):
        raw = json.dumps({"total_bytes": 136, "tensors": [good, row]}).encode()
        with pytest.raises(WeightSyncError, match="metadata"):
            layout_from_json(raw, "t")
    with pytest.raises(WeightSyncError, match="unreadable metadata"):
        layout_from_json(b"\xff{", "t")


def test_options_and_publish_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match=r"TransportOptions.bucket_mb=0.*> 0 MiB"):
        TransportOptions(kind="broadcast", bucket_mb=0)
    with pytest.raises(ValueError, match=r"TransportOptions.directory=None"):
        TransportOptions(kind="filesystem")
    with pytest.raises(ValueError, match=r"TransportOptions.kind='carrier-pigeon'.*one of"):
        TransportOptions(kind="carrier-pigeon")  # type: ignore[arg-type]
    transport = build_transport(TransportOptions())
    transport.publish({"w": torch.zeros(2)}, 5)
    with pytest.raises(ValueError, match="versions must increase.*version 5 was published.*publish version 6"):
        transport.publish({"w": torch.zeros(2)}, 5)
    with pytest.raises(TypeError, match=r"state\['w'\] is a list"):
        transport.publish({"w": [1.0]}, 6)  # type: ignore[dict-item]


# ---------------------------------------------------------------------------------------------- in-process


def test_inprocess_round_trip_latest_version_and_global_rng_untouched() -> None:
    rng_before = torch.get_rng_state()
    transport = build_transport(TransportOptions(kind="inprocess"))
    first, second = make_state(1), make_state(2)
    assert transport.publish(first, 1) == WeightVersion(1, state_checksum(first))
    published = transport.publish(second, 2)
    state, version = transport.receive(timeout_s=1.0)
    assert version == published == WeightVersion(2, state_checksum(second))
    assert_identical(state, second)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_inprocess_snapshot_is_immune_to_later_learner_updates() -> None:
    learner = make_state(3)
    expected = {name: tensor.clone() for name, tensor in learner.items()}
    transport = build_transport(TransportOptions(kind="inprocess"))
    transport.publish(learner, 1)
    learner["layers.0.weight"].add_(1.0)  # the optimizer steps in place after publishing
    learner["position_ids"].zero_()
    state, version = transport.receive(timeout_s=1.0)
    assert_identical(state, expected)
    assert version.checksum == state_checksum(expected)


def test_inprocess_detects_a_receiver_writing_into_the_shared_snapshot() -> None:
    transport = build_transport(TransportOptions(kind="inprocess"))
    transport.publish(make_state(4), 1)
    state, _ = transport.receive(timeout_s=1.0)
    state["layers.0.weight"][1, 1] += 1.0  # a misbehaving receiver mutates what the others share
    with pytest.raises(WeightSyncError, match="inprocess transport: checksum mismatch for version 1"):
        transport.receive(timeout_s=1.0)


def test_inprocess_waits_for_a_version_and_times_out_clearly() -> None:
    transport = build_transport(TransportOptions(kind="inprocess"))
    got: list[WeightVersion] = []
    waiter = threading.Thread(target=lambda: got.append(transport.receive(timeout_s=20.0, min_version=1)[1]))
    waiter.start()
    published = transport.publish(make_state(5), 1)
    waiter.join(timeout=20.0)
    assert got == [published]
    with pytest.raises(WeightSyncTimeout, match=r"inprocess transport: no weights with version >= 2 .* 0.2 s"):
        transport.receive(timeout_s=0.2, min_version=2)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(transport)


# ---------------------------------------------------------------------------------------------- filesystem


def test_filesystem_round_trip_latest_version_and_pickles(tmp_path: Path) -> None:
    publisher = build_transport(TransportOptions(kind="filesystem", directory=str(tmp_path)))
    receiver = pickle.loads(pickle.dumps(publisher))  # what a Ray actor would get
    first, second = make_state(1), make_state(2)
    publisher.publish(first, 1)
    assert receiver.receive(timeout_s=1.0)[1].version == 1
    published = publisher.publish(second, 2)
    state, version = receiver.receive(timeout_s=1.0, min_version=2)
    assert version == published == WeightVersion(2, state_checksum(second))
    assert_identical(state, second)
    pointer = json.loads((tmp_path / POINTER).read_text())
    assert pointer == {"version": 2, "file": version_file(2), "checksum": published.checksum}


def test_filesystem_prunes_to_keep_last_and_leaves_no_temp_files(tmp_path: Path) -> None:
    transport = FilesystemTransport(tmp_path, keep_last=2, fsync=False)
    for version in range(1, 6):
        transport.publish(make_state(version), version)
    assert sorted(p.name for p in tmp_path.iterdir()) == [POINTER, version_file(4), version_file(5)]
    assert_identical(transport.receive(timeout_s=1.0)[0], make_state(5))


def test_filesystem_crash_mid_publish_never_exposes_a_partial_version(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    transport = FilesystemTransport(tmp_path, fsync=False)
    transport.publish(make_state(1), 1)
    (tmp_path / f".{version_file(2)}.999.deadbeef.tmp").write_bytes(b"half a file from a crashed writer")
    real_replace = os.replace

    def crash_on(name: str):  # the process dies just before renaming `name` into place
        def replace(src, dst):  # type: ignore[no-untyped-def]
            if Path(dst).name == name:
                raise OSError("simulated crash")
            return real_replace(src, dst)
        return replace

    for target in (version_file(2), POINTER):  # before the data file is in place; before the pointer moves
        monkeypatch.setattr(os, "replace", crash_on(target))
        with pytest.raises(OSError, match="simulated crash"):
            transport.publish(make_state(2), 2)
        monkeypatch.setattr(os, "replace", real_replace)
        state, version = transport.receive(timeout_s=1.0)
        assert version.version == 1
        assert_identical(state, make_state(1))
    # the second crash left version 2's file complete but unannounced; the stale temp file is still there
    assert {p.name for p in tmp_path.iterdir()} == {POINTER, version_file(1), version_file(2),
                                                    f".{version_file(2)}.999.deadbeef.tmp"}
    restarted = FilesystemTransport(tmp_path, fsync=False)  # its first publish removes crashed writers' temp files
    restarted.publish(make_state(3), 3)
    assert not list(tmp_path.glob(".*.tmp"))
    assert restarted.receive(timeout_s=1.0)[1].version == 3


def test_filesystem_concurrent_reader_sees_only_complete_versions(tmp_path: Path) -> None:
    publisher = FilesystemTransport(tmp_path, keep_last=1, fsync=False)  # keep 1: the reader races pruning
    reader = FilesystemTransport(tmp_path, poll_s=0.001)
    states = {version: make_state(version, rows=2048) for version in range(1, 13)}  # ~200 KB each
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                state, version = reader.receive(timeout_s=10.0, min_version=seen[-1] if seen else 0)
                assert_identical(state, states[version.version])
                seen.append(version.version)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    publisher.publish(states[1], 1)
    thread = threading.Thread(target=read)
    thread.start()
    for version in range(2, 13):
        publisher.publish(states[version], version)
    stop.set()
    thread.join(timeout=30.0)
    assert not errors, errors
    assert seen and seen == sorted(seen) and seen[0] >= 1


def test_filesystem_corrupted_or_truncated_file_raises(tmp_path: Path) -> None:
    transport = FilesystemTransport(tmp_path, fsync=False)
    transport.publish(make_state(1), 1)
    path = tmp_path / version_file(1)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # a byte of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(WeightSyncError, match="filesystem transport: checksum mismatch for version 1"):
        transport.receive(timeout_s=1.0)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(WeightSyncError, match=r"cannot read .*weights-v0000000001.safetensors"):
        transport.receive(timeout_s=1.0)
    path.unlink()  # deleted behind the publisher's back: the reader retries, then says what is wrong
    with pytest.raises(WeightSyncTimeout, match=r"LATEST names weights-v0000000001.safetensors, which does not"):
        transport.receive(timeout_s=0.2)


def test_filesystem_timeout_and_tied_weights(tmp_path: Path) -> None:
    transport = FilesystemTransport(tmp_path / "weights", fsync=False)
    with pytest.raises(WeightSyncTimeout, match=r"filesystem transport: no weights .* within 0.2 s"):
        transport.receive(timeout_s=0.2)
    embed = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    tied = {"embed.weight": embed, "lm_head.weight": embed, "row": embed[3]}  # shared storage, a view
    transport.publish(tied, 1)
    assert_identical(transport.receive(timeout_s=1.0)[0], tied)


# -------------------------------------------------------------------------------- torch.distributed (gloo)

BUCKET_MB = 0.004  # int(0.004 * 2**20) = 4194 bytes per bucket


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CorruptingSender(BroadcastTransport):
    """Flips one byte of the second bucket after packing it, when told to: what a bad link would do."""

    corrupt = False

    def _pack_bucket(self, bucket, start, metas, sources):  # type: ignore[no-untyped-def]
        super()._pack_bucket(bucket, start, metas, sources)
        if self.corrupt and start == self.bucket_bytes:
            bucket[5] ^= 0xFF


def _broadcast_rank(rank: int, init_method: str, results, barrier) -> None:  # type: ignore[no-untyped-def]
    """Sender: versions 1, 2, 3, then a corrupted 4. Receivers: receive (-> 1), receive(min_version=3)
    (-> 3, skipping 2), receive (-> checksum error on 4), receive with a 1 s timeout (nothing comes)."""
    torch.set_num_threads(1)
    if rank == 0:
        transport = CorruptingSender(init_method, 0, 3, "cpu", BUCKET_MB, 30.0)
    else:
        options = TransportOptions(kind="broadcast", init_method=init_method, num_receivers=2,
                                   bucket_mb=BUCKET_MB, timeout_s=30.0)
        transport = build_transport(options, rank)
    try:
        if rank == 0:
            published = [transport.publish(make_state(v, rows=512), v) for v in (1, 2, 3)]
            transport.corrupt = True
            transport.publish(make_state(4, rows=512), 4)
            results.put((0, published))
            return
        got: list[object] = []
        for min_version in (None, 3):
            state, version = transport.receive(timeout_s=30.0, min_version=min_version)
            assert_identical(state, make_state(version.version, rows=512))
            got.append(version)
        for timeout_s in (30.0, 1.0):
            try:
                got.append(f"no error: {transport.receive(timeout_s=timeout_s)[1]}")
            except WeightSyncError as err:
                got.append(f"{type(err).__name__}: {err}")
        results.put((rank, got))
    finally:
        barrier.wait(60)  # the sender stays in the group until every receiver is done
        transport.close()


@pytest.fixture(scope="module")
def broadcast_run() -> dict[int, list]:
    """One run of 1 sender + 2 receiver processes (spawn, gloo on 127.0.0.1): what each rank saw."""
    context = mp.get_context("spawn")
    results, barrier = context.SimpleQueue(), context.Barrier(3)
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(_broadcast_rank, args=(init_method, results, barrier), nprocs=3, join=True)
    return dict(results.get() for _ in range(3))


@pytest.mark.timeout(180)
def test_broadcast_one_sender_two_receivers_many_buckets(broadcast_run: dict[int, list]) -> None:
    # weight 512*24*4 = 49152 B at 0; norm 24*2 = 48 B at 49152; position_ids 15*8 = 120 B at 49216;
    # mask 7 B at 49344; scale 4 B at 49408; empty 0 B at 49472 -> 49472 bytes = 12 buckets of 4194
    assert plan_layout(make_state(1, rows=512))[1] == 49472
    published = broadcast_run[0]
    assert [v.version for v in published] == [1, 2, 3]
    assert all(v.checksum == state_checksum(make_state(v.version, rows=512)) for v in published)
    assert broadcast_run[1][:2] == broadcast_run[2][:2] == [published[0], published[2]]  # bit-identity: in ranks


@pytest.mark.timeout(180)
def test_broadcast_receivers_reject_corruption_and_time_out_clearly(broadcast_run: dict[int, list]) -> None:
    for rank in (1, 2):
        corrupt, timeout = broadcast_run[rank][2:]
        assert corrupt.startswith("WeightSyncError: broadcast transport: checksum mismatch for version 4"), corrupt
        assert f"(rank {rank})" in corrupt
        assert timeout.startswith(f"WeightSyncTimeout: broadcast transport: rank {rank}/3 timed out after 1 s"), timeout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPUs")
def test_broadcast_nccl_without_gpus_fails_fast() -> None:
    options = TransportOptions(kind="broadcast", device="cuda", init_method=f"tcp://127.0.0.1:{_free_port()}")
    with pytest.raises(WeightSyncError, match=r"NCCL.*needs CUDA GPUs.*use device 'cpu' \(gloo\)"):
        build_transport(options, rank=0)
    with pytest.raises(ValueError, match="init_method must look like tcp://"):
        build_transport(TransportOptions(kind="broadcast", init_method="env://"), rank=0)


# ------------------------------------------------------------------------------------- Ray object store


@pytest.fixture(scope="module")
def ray_cluster():  # type: ignore[no-untyped-def]
    """A fresh local Ray cluster bound to 127.0.0.1 (token authentication is on by default in Ray 2.60)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=100 * 2**20, namespace="test-transports", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})  # workers import this file
    try:
        yield ray
    finally:
        ray.shutdown()


class RayReceiver:
    """What a rollout actor does with the transport it was handed (the transport arrives pickled)."""

    def __init__(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def receive(self, min_version: int | None, timeout_s: float):  # type: ignore[no-untyped-def]
        return self.transport.receive(timeout_s=timeout_s, min_version=min_version)

    def close(self) -> None:
        self.transport.close()


@pytest.mark.timeout(240)
def test_ray_two_actor_receivers_get_the_latest_version(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    ray = ray_cluster
    transport = build_transport(TransportOptions(kind="ray", ray_actor_name="weights-round-trip", timeout_s=60.0))
    actors = [ray.remote(num_cpus=0)(RayReceiver).remote(transport) for _ in range(2)]
    waiting = [actor.receive.remote(2, 120.0) for actor in actors]  # asked before anything is published
    first, second = make_state(1), make_state(2)
    transport.publish(first, 1)
    published = transport.publish(second, 2)
    expected = {name: tensor.clone() for name, tensor in second.items()}
    second["layers.0.weight"].mul_(2.0)  # the learner steps in place: the put object is a snapshot
    assert published == WeightVersion(2, state_checksum(expected))
    for state, version in ray.get(waiting, timeout=180):
        assert version == published
        assert_identical(state, expected)
    ray.get(actors[1].close.remote(), timeout=60)  # an actor closing its copy leaves the registry alive
    state, version = ray.get(actors[0].receive.remote(None, 60.0), timeout=120)  # no minimum: the latest
    assert version == published
    assert_identical(state, expected)
    transport.close()


@pytest.mark.timeout(240)
def test_ray_rejects_corrupted_payloads_stale_publishers_and_times_out(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    from system.transports.ray_store import _to_payload

    ray = ray_cluster
    transport = build_transport(TransportOptions(kind="ray", ray_actor_name="weights-faults", timeout_s=60.0))
    transport.publish(make_state(1), 1)
    honest = make_state(3)
    tampered = dict(honest, scale=torch.tensor(-3.0))  # the object's bytes differ from the announced checksum
    ray.get(transport._registry.publish.remote(3, state_checksum(honest), [ray.put(_to_payload(tampered))]))
    with pytest.raises(WeightSyncError, match="ray transport: checksum mismatch for version 3"):
        transport.receive(timeout_s=30.0)
    with pytest.raises(WeightSyncTimeout, match=r"ray transport: no weights with version >= 9 .* 0.5 s .*version 3"):
        transport.receive(timeout_s=0.5, min_version=9)
    other = build_transport(TransportOptions(kind="ray", ray_actor_name="weights-faults"))  # finds the registry
    with pytest.raises(ValueError, match="already holds version 3; versions must increase"):
        other.publish(make_state(2), 2)
    transport.close()
    with pytest.raises(WeightSyncError, match="closed"):
        transport.receive(timeout_s=1.0)
