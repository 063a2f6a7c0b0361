"""``niti bench`` on a tiny configuration: the result has every field (no timing assertions)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from niti import bench
from niti.kernels import fused

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny() -> dict:
    return bench.run_bench("lenet", 8, threads=1, steps=2, warmup=1)


def test_run_bench_reports_every_measurement(tiny: dict) -> None:
    assert tiny["model"] == "lenet" and tiny["batch_size"] == 8 and tiny["threads"] == 1
    integer, fp32 = tiny["integer"], tiny["fp32"]
    for d in (integer, fp32):
        assert "error" not in d, d.get("error")
        assert d["step_s"] > 0 and len(d["step_times_s"]) == 2 and d["threads"] == 1
        assert d["peak_bytes"] > 0 and d["peak_method"].startswith("VmHWM")
    assert fp32["precision"] == "fp32" and fp32["niti_imported"] is False  # the baseline never saw niti
    assert integer["compiled"] == fused.compile_enabled() and integer["fused_fallbacks"] == {}
    assert "skipped" in tiny["bf16"] or tiny["bf16"]["step_s"] > 0
    assert len(tiny["load_average_before"]) == 3 and tiny["machine"]["cpu"]
    assert "omp_wait_policy" in tiny and integer["step_cpu_s"] > 0 and fp32["step_cpu_s"] > 0
    from niti.kernels import cpu_bn
    from niti.kernels.matmul import cpu_matmul_path

    paths = integer["kernel_paths"]  # measured in the worker process, which is set up like this one
    assert paths["int8 product"] == cpu_matmul_path()
    assert paths["batch norm"] == ("C" if cpu_bn.available(fused.VALUES) else "PyTorch")
    assert set(paths) == {"int8 product", "batch norm", "max pool", "rounding", "im2col", "chains"}
    assert paths["rounding"] == paths["im2col"] == paths["batch norm"] == paths["chains"]  # all C loops build alike
    assert "kernels: int8 product" in bench.format_report(tiny)


def test_breakdown_separates_products_from_the_rest(tiny: dict) -> None:
    bd = tiny["integer"]["breakdown"]
    names = [row["name"] for row in bd["layers"]]
    assert "0:Conv2d/forward" in names and "0:Conv2d/backward" in names and "loss" in names and "update" in names
    assert bd["int_mm_calls"] >= 10 and bd["int8_ops_per_step"] > 0
    assert 0 < bd["int_mm_seconds"] < bd["profiled_step_seconds"]
    cats = bd["categories_seconds"]
    assert {"int_mm", "rescale", "conv_linear_data_movement", "relu", "pool", "loss", "update"} <= set(cats)
    assert sum(cats.values()) == pytest.approx(bd["profiled_step_seconds"])
    for row in bd["layers"]:
        assert row["int_mm_seconds"] <= row["seconds"] + 1e-9
        assert row["int_mm_seconds"] == 0 or "Conv2d" in row["name"] or "Linear" in row["name"]


def test_summary_ratios_and_int8_peak(tiny: dict) -> None:
    s, integer = tiny["summary"], tiny["integer"]
    assert s["speedup_vs_fp32"] == pytest.approx(tiny["fp32"]["step_s"] / integer["step_s"])
    assert s["integer_images_per_s"] == pytest.approx(8 / integer["step_s"])
    assert s["memory_integer_over_fp32"] == pytest.approx(integer["peak_bytes"] / tiny["fp32"]["peak_bytes"])
    assert integer["int8_peak"]["ops_per_s"] > 0 and len(integer["int8_peak"]["shape_mkn"]) == 3
    assert 0 < s["int_mm_fraction_of_peak"] and 0 < s["int_mm_fraction_of_step"] < 1
    assert "lenet batch 8" in bench.format_report(tiny)
    json.dumps(tiny)  # one JSON object


def test_cli_pair_prints_json(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tiny: dict) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--model", "lenet", "--batch-size", "8", "--threads", "1", "--json"])
    seen = {}

    def fake(*a, **k):  # noqa: ANN002, ANN003, ANN202
        seen["call"] = (a, k)
        return tiny
    monkeypatch.setattr(bench, "run_bench", fake)
    assert bench.main(args) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "lenet"
    assert seen["call"][0][:3] == ("lenet", 8, 1)


def test_rounds_interleave_the_measurements_and_keep_each() -> None:
    """Two rounds: each side's step time is the median of its rounds', the paired per-round speed-ups are kept and
    only the first integer round is profiled (no timing assertion)."""
    import statistics

    r = bench.run_bench("lenet", 4, threads=1, steps=1, warmup=0, bf16="never", rounds=2)
    integer, fp32 = r["integer"], r["fp32"]
    assert r["rounds"] == 2 and len(integer["round_step_s"]) == len(fp32["round_step_s"]) == 2
    assert integer["step_s"] == statistics.median(integer["round_step_s"])
    assert r["summary"]["speedup_vs_fp32_rounds"] == pytest.approx(
        [f / i for i, f in zip(integer["round_step_s"], fp32["round_step_s"])])
    assert integer["breakdown"]["int_mm_calls"] > 0 and "2 interleaved rounds" in bench.format_report(r)


def test_bench_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        bench.run_bench("resnet", 8)
    with pytest.raises(ValueError, match="batch_size"):
        bench.run_bench("lenet", 0)
    with pytest.raises(ValueError, match="omp_wait_policy"):
        bench.run_bench("lenet", 8, omp_wait_policy="spin")
    with pytest.raises(ValueError, match="rounds"):
        bench.run_bench("lenet", 8, rounds=0)


def test_bench_step_writes_markdown_summary(tiny: dict) -> None:
    spec = importlib.util.spec_from_file_location("bench_step", ROOT / "benchmarks" / "bench_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = mod.summary_markdown([tiny], "python benchmarks/bench_step.py --models lenet")
    assert "| lenet | 8 |" in md and tiny["machine"]["cpu"] in md and "bench_step.py --models lenet" in md


def test_bench_times_a_user_model_against_that_same_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "benchnets.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2, bias=True), torch.nn.ReLU(),\n"
        "                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))\n")
    monkeypatch.chdir(tmp_path)
    r = bench.run_bench("benchnets:tiny", 4, threads=1, steps=1, warmup=0, bf16="never", input_shape=(9, 9, 1))
    assert "error" not in r["integer"], r["integer"].get("error")
    assert "error" not in r["fp32"], r["fp32"].get("error")
    assert r["fp32"]["niti_imported"] is False
    names = [row["name"] for row in r["integer"]["breakdown"]["layers"]]
    assert "2:AvgPool2d/forward" in names
    with pytest.raises(ValueError, match="input shape"):
        bench.run_bench("benchnets:tiny", 4)
