"""Data-parallel training is bit-identical to one process; failed or hung ranks stop the job.

The two-rank runs go through ``launch_command`` and ``init_from_env`` exactly
as ``niti train --nproc 2`` does: this file doubles as the worker script
(``python tests/test_distributed.py WORKER OUT_DIR DATA_DIR``).

Both sides run the eager twins of the fused chains (``NITI_COMPILE=0``): each
process would otherwise spend tens of seconds compiling, and compiled == eager
is ``tests/test_fused.py``'s job.  ``benchmarks/bench_distributed.py`` checks
1 vs 2 processes with compilation on.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from niti import RoundingPolicy, build
from niti.distributed import DistInfo, all_sum_int, init_from_env, launch_command, shard

# name -> (model, dataset, policy, accumulator_bits, global batch, steps)
CONFIGS = {
    "default": ("lenet", "mnist", RoundingPolicy(), 8, 32, 4),
    "nearest": ("lenet", "mnist", RoundingPolicy.all("nearest"), 8, 32, 4),
    "stochastic": ("lenet", "mnist", RoundingPolicy.all("stochastic"), 8, 32, 4),
    "pseudo_stochastic": ("lenet", "mnist", RoundingPolicy.all("pseudo_stochastic"), 8, 32, 4),
    "truncate": ("lenet", "mnist", RoundingPolicy.all("truncate"), 8, 32, 4),
    "default-acc16": ("lenet", "mnist", RoundingPolicy(), 16, 32, 4),
    # Dropout (a mask per element, each rank its slice of the whole batch's) and 3-channel input; a smaller batch
    # keeps it quick.
    "vgg-stochastic": ("vgg-small-7", "cifar10", RoundingPolicy.all("stochastic"), 8, 4, 2),
    # Integer batch norm: per-channel sums over both ranks (mean, deviation, the backward's means), running stats.
    "resnet-20": ("resnet-20", "cifar10", RoundingPolicy(), 16, 8, 2),
    # Activation clipping bounded by a share of the whole batch: each rank counts its slice, the sums choose.
    "clip-share": ("lenet", "mnist", RoundingPolicy(), 16, 32, 4),
}
#: Build options beyond CONFIGS' columns.
OPTIONS = {"clip-share": {"act_clip_bits": 2, "act_clip_share": 7}}  # 7: a rank's own count would choose differently
PREDICT_BATCH = 64
EVAL_IMAGES = 67  # batches of 32, 32 and 3: the last cannot be split over 2 ranks
WORKER = "WORKER"


@functools.lru_cache(maxsize=None)
def _split(data_dir: Path, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Real NHWC uint8 images and int64 labels (MNIST train; CIFAR-10 from its smaller test split)."""
    split = "train" if dataset == "mnist" else "test"
    with np.load(data_dir / f"{dataset}.npz") as f:
        x, y = f[f"x_{split}"], f[f"y_{split}"]
    if x.ndim == 3:
        x = x[..., None]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


def _load(data_dir: Path, dataset: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _split(Path(data_dir), dataset)
    return x[:n], y[:n]


def _train(name: str, data_dir: Path, info: DistInfo | None, *, audit: bool = False,
           tamper=None) -> tuple[object, list[str]]:  # noqa: ANN001
    """Train config ``name``; returns the model and its weight hash after every step."""
    from niti.distributed import attach

    arch, dataset, policy, acc_bits, batch, steps = CONFIGS[name]
    images, labels = _load(data_dir, dataset, batch * steps)
    model = build(arch, seed=3, policy=policy, accumulator_bits=acc_bits, total_steps=steps, **OPTIONS.get(name, {}))
    if info is not None:
        attach(model, info)
        if tamper is not None:
            tamper(model)
    hashes = []
    for s in range(steps):
        x, y = shard(images[s * batch:(s + 1) * batch], labels[s * batch:(s + 1) * batch], info)
        if audit and s == 0:
            from niti import integer_only
            with integer_only() as mode:
                model.train_step(x, y)
            assert mode.ops > 0
        else:
            model.train_step(x, y)
        hashes.append(model.weights_sha256())
    return model, hashes


def _logits_digest(m: torch.Tensor, e: int) -> str:
    import hashlib
    return hashlib.sha256(m.numpy().tobytes() + f"e={e}".encode()).hexdigest()


def _eval_probe(model, data_dir: Path, info: DistInfo | None) -> list:  # noqa: ANN001
    """Correct count over EVAL_IMAGES held-out images in batches of 32 (the last one uneven), then RNG state."""
    from niti.distributed import evaluate_sharded, replica_fingerprint

    x, y = _split(Path(data_dir), "mnist")
    correct = evaluate_sharded(model, x[-EVAL_IMAGES:], y[-EVAL_IMAGES:], info, batch_size=32)
    return [correct, replica_fingerprint(model)["generator_states"]]


def _sum_probe(info: DistInfo) -> dict:
    """Exact gradient sums: int32 on the wire when it provably fits, int64 when it might not; input untouched."""
    from niti.distributed import Collectives, all_sum_float

    coll = Collectives(info.world_size)
    small = torch.tensor([[3 + info.rank, -(2**29)]], dtype=torch.int32)
    big = torch.tensor([2**40 + info.rank, -5], dtype=torch.int64)
    edge = torch.tensor([2**30], dtype=torch.int32)  # 31 bits: 2 · (2**31 - 1) does not fit int32
    out = [coll.reduce_sum(t) for t in (small, big, edge)]
    return {"small": out[0].tolist(), "small_dtype": str(out[0].dtype), "big": out[1].tolist(),
            "edge": out[2].tolist(), "edge_dtype": str(out[2].dtype), "untouched": small[0, 0].item() == 3 + info.rank,
            "int64_calls": coll.stats.grad_int64_calls, "grad_bytes": coll.stats.grad_bytes,
            "float": all_sum_float([0.5 * (info.rank + 1)])}


# ----------------------------------------------------------------------------- worker side
def _worker(out_dir: Path, data_dir: Path) -> None:
    import torch.distributed as dist

    from niti.distributed import attach, shutdown

    torch.set_num_threads(1)
    t_start = time.monotonic()
    info = init_from_env(timeout_s=60)
    t_init = time.monotonic() - t_start
    assert info is not None and dist.get_world_size() == 2 == info.world_size
    report: dict = {"rank": info.rank, "world_size": dist.get_world_size(), "hashes": {},
                    "idempotent": init_from_env() == info}
    report["sums"] = _sum_probe(info)
    for name in CONFIGS:
        t0 = time.monotonic()
        model, hashes = _train(name, data_dir, info, audit=name == "default")
        report["hashes"][name] = hashes
        report.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 2)
        if name == "default":
            # Evaluation is a collective too: shards of one batch give the single-process logits.
            x = _split(data_dir, "mnist")[0][-PREDICT_BATCH:]
            xs, _ = shard(x, torch.zeros(PREDICT_BATCH, dtype=torch.int64), info)
            out = model.predict_logits(xs)
            parts = [torch.empty_like(out.m) for _ in range(info.world_size)]
            dist.all_gather(parts, out.m)
            report["predict"] = _logits_digest(torch.cat(parts), out.e)
            report["correct_sum"] = all_sum_int([info.rank + 1, 10])
        if name == "stochastic":
            report["eval"] = _eval_probe(model, data_dir, info)

    # Negative control: the same run with rank-blind random draws must NOT match one process.
    def rank_blind(model) -> None:  # noqa: ANN001
        model.runtime.rank, model.runtime.world_size = 0, 1
    report["rank_blind_stochastic"] = _train("stochastic", data_dir, info, tamper=rank_blind)[1]

    # Replicas that disagree are refused with a message naming the rank.
    bad = build("lenet", seed=100 + info.rank)
    try:
        attach(bad, info)
        report["mismatch_error"] = None
    except RuntimeError as exc:
        report["mismatch_error"] = str(exc)
    report["seconds"]["init"] = round(t_init, 2)
    report["seconds"]["all"] = round(time.monotonic() - t_start, 2)
    (out_dir / f"rank{info.rank}.json").write_text(json.dumps(report))
    shutdown()
    # The report is written; skip the interpreter's teardown, whose C++ thread destructors once aborted rank 0
    # ("terminate called without an active exception") after all the work was done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ----------------------------------------------------------------------------- test side
@pytest.fixture(scope="module", autouse=True)
def _eager_chains():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NITI_COMPILE", "0")
        yield


@functools.lru_cache(maxsize=None)
def _reference(name: str, data_dir: Path) -> tuple[object, list[str]]:
    """One process, whole batches: the run every rank must reproduce bit for bit."""
    return _train(name, data_dir, None)


@pytest.fixture(scope="module")
def two_rank_reports(tmp_path_factory, shared_data_dir) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    code = launch_command(2, [sys.executable, __file__, WORKER, str(out), str(shared_data_dir)], timeout_s=240,
                          grace_s=5, env={**os.environ, "NITI_COMPILE": "0"})
    assert code == 0, f"two-rank worker job failed with exit code {code} (see captured stderr)"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_really_ran(two_rank_reports) -> None:
    assert [r["rank"] for r in two_rank_reports] == [0, 1]
    assert all(r["world_size"] == 2 for r in two_rank_reports)
    assert two_rank_reports[0]["correct_sum"] == [3, 20]
    assert all(r["idempotent"] for r in two_rank_reports)


def test_gradient_sums_are_exact_and_sized(two_rank_reports) -> None:
    for r in two_rank_reports:
        s = r["sums"]
        assert s["small"] == [[7, -(2**30)]] and s["small_dtype"] == "torch.int32" and s["untouched"]
        assert s["big"] == [2**41 + 1, -10]
        assert s["edge"] == [2**31] and s["edge_dtype"] == "torch.int64"
        assert s["int64_calls"] == 2 and s["grad_bytes"] == 8 + 16 + 8
        assert s["float"] == [1.5]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_match_one_process(name, two_rank_reports, shared_data_dir) -> None:
    _, reference = _reference(name, shared_data_dir)
    for r in two_rank_reports:
        assert r["hashes"][name] == reference, f"rank {r['rank']} diverged from one process ({name})"
    assert len(set(reference)) == len(reference), "weights did not change every step"


def test_sharded_predict_matches_one_process(two_rank_reports, shared_data_dir) -> None:
    model, _ = _reference("default", shared_data_dir)
    out = model.predict_logits(_split(shared_data_dir, "mnist")[0][-PREDICT_BATCH:])
    assert two_rank_reports[0]["predict"] == _logits_digest(out.m, out.e)


def test_sharded_evaluation_matches_one_process(two_rank_reports, shared_data_dir) -> None:
    """All-stochastic model: activation draws happen in evaluation too, and must stay in step."""
    model, _ = _reference("stochastic", shared_data_dir)
    reference = _eval_probe(model, shared_data_dir, None)
    assert 0 < reference[0] <= EVAL_IMAGES
    assert [r["eval"] for r in two_rank_reports] == [reference, reference]


def test_rank_blind_draws_would_diverge(two_rank_reports, shared_data_dir) -> None:
    """The slicing of whole-batch draws matters: without it the stochastic run differs (the test can fail)."""
    _, reference = _reference("stochastic", shared_data_dir)
    assert two_rank_reports[0]["rank_blind_stochastic"][-1] != reference[-1]


def test_mismatched_replicas_are_refused(two_rank_reports) -> None:
    for r in two_rank_reports:
        msg = r["mismatch_error"]
        assert msg is not None and "rank 1 differs from rank 0" in msg and "weights_sha256" in msg


def test_shard_slices_and_errors() -> None:
    x = torch.arange(12, dtype=torch.uint8).reshape(6, 2)
    y = torch.arange(6)
    parts = [shard(x, y, DistInfo(r, 3, r)) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(parts[1][1], y[2:4])
    assert shard(x, y, None)[0] is x
    with pytest.raises(ValueError, match="multiple of 4"):
        shard(x, y, DistInfo(0, 4, 0))
    with pytest.raises(ValueError, match="differ in length"):
        shard(x, y[:5], DistInfo(0, 2, 0))


def test_init_from_env_without_world_size(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        init_from_env()
    assert all_sum_int([4, 5]) == [4, 5]  # no process group: identity


def test_backend_follows_the_device() -> None:
    """gloo for CPU training; NCCL for a GPU when torch has it (collectives stay on the GPU), else gloo."""
    from niti.distributed.group import backend_for, wire_device

    assert backend_for("cpu") == "gloo"
    expected = "nccl" if torch.distributed.is_nccl_available() else "gloo"
    assert backend_for("cuda") == expected == backend_for(torch.device("cuda", 0))
    assert wire_device() == torch.device("cpu")  # no process group


def test_attach_refuses_other_models() -> None:
    from niti.distributed import attach

    with pytest.raises(TypeError, match="IntegerModel"):
        attach(object(), DistInfo(0, 2, 0))


def test_dead_rank_stops_the_job(capfd) -> None:
    """Rank 1 dies mid-run while rank 0 is still busy: the launcher stops rank 0 at once and names rank 1.

    (The ranks skip torch here to keep the test quick; the launcher only watches processes.)
    """
    cmd = [sys.executable, "-c", textwrap.dedent("""
        import os, time
        if os.environ["RANK"] == "1":
            time.sleep(0.5)
            os._exit(3)
        time.sleep(120)
    """)]
    t0 = time.monotonic()
    code = launch_command(2, cmd, grace_s=5)
    elapsed = time.monotonic() - t0
    err = capfd.readouterr().err
    assert code == 3
    assert "rank 1" in err and "exited with code 3" in err and "stopping ranks [0]" in err
    assert elapsed < 30, f"took {elapsed:.0f} s to stop the job"


def test_hung_rank_times_out(capfd) -> None:
    """Rank 1 hangs outside any collective: rank 0's collective times out, then the launcher stops rank 1."""
    cmd = [sys.executable, "-c", textwrap.dedent("""
        import time
        import torch, torch.distributed as dist
        from niti.distributed import init_from_env
        info = init_from_env(timeout_s=3)
        dist.barrier()
        if info.rank == 1:
            time.sleep(120)
        t = torch.zeros(1, dtype=torch.int64)
        dist.all_reduce(t)
    """)]
    t0 = time.monotonic()
    code = launch_command(2, cmd, grace_s=5)
    elapsed = time.monotonic() - t0
    err = capfd.readouterr().err
    assert code != 0
    assert "niti launch: rank 0" in err and "stopping ranks [1]" in err
    assert elapsed < 60, f"took {elapsed:.0f} s to stop the job"


def test_job_timeout_and_signal_death(capfd) -> None:
    t0 = time.monotonic()
    assert launch_command(2, [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=2, grace_s=2) == 124
    assert time.monotonic() - t0 < 20
    assert "exceeded its 2 s limit" in capfd.readouterr().err
    kill_self = "import os, signal; os.environ['RANK'] == '1' and os.kill(os.getpid(), signal.SIGKILL)"
    assert launch_command(2, [sys.executable, "-c", kill_self], grace_s=2) == 128 + 9
    assert "rank 1" in capfd.readouterr().err
    with pytest.raises(ValueError, match="nproc"):
        launch_command(0, ["true"])


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == WORKER:
    _worker(Path(sys.argv[2]), Path(sys.argv[3]))


def test_fingerprint_covers_per_layer_gb_offsets() -> None:
    """Ranks whose layers step by different gb would drift apart: the pre-flight check must see the offsets."""
    from niti.distributed import replica_fingerprint

    a = build("lenet", seed=0, accumulator_bits=16)
    b = build("lenet", seed=0, accumulator_bits=16, gb_offsets=(0, 0, 0, 1))
    fa, fb = replica_fingerprint(a), replica_fingerprint(b)
    assert {k for k in fa if fa[k] != fb[k]} == {"gb_offsets"}


def test_fingerprint_covers_numerics_2_settings() -> None:
    """Ranks that differ only in update rule, softmax, input scale, dropout masks or activation clipping must be told
    apart before any step."""
    from niti.distributed import replica_fingerprint
    from niti.models import build
    from niti.optim import UpdateRule

    base = replica_fingerprint(build("lenet", seed=0))
    for kwargs, field in (({"rule": UpdateRule(momentum_shift=2)}, "rule"), ({"softmax": "coarse"}, "softmax"),
                          ({"scale": (50,)}, "scale"), ({"dropout": "batch"}, "dropout"),
                          ({"act_clip_bits": 2}, "activation_clip"), ({"act_clip_share": 6}, "activation_clip")):
        other = replica_fingerprint(build("lenet", seed=0, **kwargs))
        assert {k for k in base if base[k] != other[k]} == {field}


def test_replicas_are_compared_as_integer_digests_not_pickles(monkeypatch) -> None:
    """verify_replicas gathers fixed-size uint8 digests; it never unpickles what a peer sends."""
    import socket

    import torch.distributed as dist

    from niti.distributed import fingerprint_digests, verify_replicas

    a, b = build("lenet", seed=0), build("lenet", seed=1)
    da, db = fingerprint_digests(a), fingerprint_digests(b)
    assert da.dtype == torch.uint8 and da.shape == (15, 32)  # one SHA-256 per fingerprint field
    assert torch.equal(da, fingerprint_digests(build("lenet", seed=0)))
    assert not torch.equal(da[1], db[1]) and torch.equal(da[0], db[0])  # weights differ, architecture agrees

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("all_gather_object unpickles peer data")

    monkeypatch.setattr(dist, "all_gather_object", refuse)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        verify_replicas(a, DistInfo(0, 1, 0))
    finally:
        dist.destroy_process_group()
