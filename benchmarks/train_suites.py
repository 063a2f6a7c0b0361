"""Accuracy benchmarks: named suites of `niti train` runs, collected into results/<suite>/.

Each run is a real `python -m niti train` subprocess on the full data sets; its summary.json,
metrics.jsonl and steps.jsonl are copied to results/<suite>/<run>/, and results/<suite>/README.md
gets a table with the exact commands, date, machine and wall time, plus curves.png.

    python benchmarks/train_suites.py mnist-1epoch --data-dir ../shared/data
    python benchmarks/train_suites.py mnist-seeds --epochs 4 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.train.checkpoint import atomic_write_bytes  # noqa: E402  (a half-written runs.json would lose rows)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return (f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def suite_runs(name: str, a: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(run name, niti train arguments) for a suite."""
    runs = _suite_runs(name, a)
    if a.gb_schedule:
        runs = [(run, args + (["--gb-schedule", a.gb_schedule] if "float" not in args else [])) for run, args in runs]
    if a.accumulator_bits:
        runs = [(run, args + (["--accumulator-bits", str(a.accumulator_bits)] if "float" not in args else []))
                for run, args in runs]
    if a.lr is not None:
        runs = [(run, args + (["--lr", str(a.lr)] if "float" in args else [])) for run, args in runs]
    if a.train_limit:
        runs = [(run, args + ["--train-limit", str(a.train_limit)]) for run, args in runs]
    return runs


#: Issue 12: the float twin's own recipe in integers: float SGD's step (proportional to the summed gradient, not
#: rescaled per tensor and step), gb 5 = the twin's lr 0.05, its 100x annealing (x0.1 at 50 %, x0.01 at 75 %), and
#: initial weights within the Xavier bound, as the twin draws them.
FLOAT_SGD_FLAGS = ["--step-scale", "exponent", "--no-full-range-init", "--gb-schedule", "5,5/3,-5/3@1/2,3/4"]
#: ... the velocity decaying into a new gb on its own (the default; named so that the arms keep their meaning) ...
_PLAIN_VELOCITY = ["--no-velocity-rescale"]
#: ... without weight decay, as the arms that use it ran before the twin's decay became a default (2026-12-02;
#: their recorded commands, written before, omit the --decay-shift 0 that was then the default).
SGD_STEP_FLAGS = [*FLOAT_SGD_FLAGS, *_PLAIN_VELOCITY, "--decay-shift", "0"]
#: ... with the twin's weight decay (docs/numerics.md §5): the defaults of 2026-12-02.
SGD_DECAY_FLAGS = [*FLOAT_SGD_FLAGS, *_PLAIN_VELOCITY, "--decay-shift", "17"]
#: ... and the velocity following a gb change as float SGD's buffer follows its lr (--velocity-rescale, an option
#: since 2026-12-03; docs/numerics.md §5).
VELOCITY_FLAGS = [*FLOAT_SGD_FLAGS, "--decay-shift", "17", "--velocity-rescale"]
#: ... and two bits more room for the first and last weighted layers' int16 masters (--end-headroom, an option since
#: 2026-12-03; docs/numerics.md §6): the float twin's weights there grow farthest past the integer rail.
END_HEADROOM_FLAGS = [*SGD_DECAY_FLAGS, "--end-headroom", "2"]
#: The first version's numerics (before issue 12) from today's flags.
FIRST_NUMERICS_FLAGS = ["--softmax", "coarse", "--no-input-std", "--no-full-range-init", "--batch-ref", "0",
                        "--momentum-shift", "0", "--accumulator-bits", "8", "--step-scale", "max", "--decay-shift", "0",
                        "--err-round", "nearest", "--random-bits", "generator", "--act-clip-bits", "0",
                        "--gb-schedule", "5,4,3@0.5,0.75"]


def _suite_runs(name: str, a: argparse.Namespace) -> list[tuple[str, list[str]]]:
    seeds = [int(s) for s in a.seeds.split(",")]
    if name == "mnist-1epoch":
        return [(f"lenet-int-s{s}", ["--model", "lenet", "--epochs", "1", "--batch-size", "64", "--seed", str(s)])
                for s in seeds]
    if name == "mnist-seeds":
        runs = []
        for arith in ("int", "float"):
            for s in seeds:
                runs.append((f"lenet-{arith}-s{s}", ["--model", "lenet", "--arith", arith, "--epochs", str(a.epochs),
                                                     "--batch-size", "64", "--seed", str(s)]))
        return runs
    if name == "mnist-ablation":
        tag = (lambda s: "") if len(seeds) == 1 else (lambda s: f"-s{s}")  # one seed: the original run names
        return [(f"lenet-grad-{mode}{tag(s)}", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size", "64",
                                               "--seed", str(s), "--grad-round", mode])
                for mode in ("pseudo_stochastic", "stochastic", "nearest", "truncate") for s in seeds]
    if name == "cifar-vgg7":
        runs = []
        for arith in ("int", "float"):
            for s in seeds:
                runs.append((f"vgg7-{arith}-s{s}", ["--model", "vgg-small-7", "--arith", arith, "--epochs",
                                                    str(a.epochs), "--batch-size", str(a.batch_size or 128),
                                                    "--seed", str(s)]))
        # Issue 12, 2026-12-02: the integer arm with that day's defaults (float SGD's step, before the twin's weight
        # decay joined them: --decay-shift 0, which its recorded command omits); vgg7-int-s* ran the defaults of its
        # own day (results/cifar-vgg7-3ep records them).
        return runs + [(f"vgg7-int-sgd-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                               str(a.batch_size or 128), "--decay-shift", "0", *_PLAIN_VELOCITY,
                                               "--seed", str(s)])
                       for s in seeds] + [
            # Issue 12, 2026-12-02: the defaults since the twin's weight decay joined them (docs/numerics.md §5,
            # §10), named flags so the arm keeps its meaning if a default moves again ...
            (f"vgg7-int-sgd-wd17-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                         str(a.batch_size or 128), *SGD_DECAY_FLAGS, "--seed", str(s)])
            for s in seeds] + [
            # ... and the float twin re-measured with dropout drawn per element (commit 601d617; vgg7-float-s0 ran
            # with one mask per feature across the batch), at its tuned lr (niti.baseline.TUNED_LR).
            (f"vgg7-float-edrop-s{s}", ["--model", "vgg-small-7", "--arith", "float", "--epochs", str(a.epochs),
                                        "--batch-size", str(a.batch_size or 128), "--lr", "0.05", "--seed", str(s)])
            for s in seeds] + [
            # 2026-12-03: is the weight decay's cost at this length the integer model's alone? The twin without it.
            (f"vgg7-float-edrop-nodecay-s{s}", ["--model", "vgg-small-7", "--arith", "float", "--epochs",
                                                str(a.epochs), "--batch-size", str(a.batch_size or 128), "--lr", "0.05",
                                                "--weight-decay", "0", "--seed", str(s)])
            for s in seeds] + [
            # 2026-12-03: today's defaults with the velocity following gb changes (--velocity-rescale, §5).
            (f"vgg7-int-vr-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                   str(a.batch_size or 128), *VELOCITY_FLAGS, "--seed", str(s)])
            for s in seeds] + [
            # 2026-12-03: the first and last layers with two bits more room (weight-range.md: the twin's weights
            # there pass the integer rail most), with the decay and without it.
            (f"vgg7-int-eh2-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                    str(a.batch_size or 128), *END_HEADROOM_FLAGS, "--seed", str(s)])
            for s in seeds] + [
            (f"vgg7-int-eh2-nodecay-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                            str(a.batch_size or 128), *SGD_STEP_FLAGS, "--end-headroom", "2",
                                            "--seed", str(s)])
            for s in seeds] + [
            # 2026-12-03: finer activations (docs/numerics.md §2: c = 2 bounded at 2**-5 of a batch saturated, the
            # quarter model's 40-epoch leader): is the forward's rounding what slows the full model?
            (f"vgg7-int-clip2k5-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                        str(a.batch_size or 128), *SGD_DECAY_FLAGS, "--act-clip-bits", "2",
                                        "--act-clip-share", "5", "--seed", str(s)])
            for s in seeds] + [
            # 2026-12-03: the step rounded stochastically (counter-based bits) instead of by PSR: after the first
            # decay most velocities are below one master unit, where PSR never rounds up below 1/16 and rounds
            # down more often than the fraction says.
            (f"vgg7-int-gsr-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                    str(a.batch_size or 128), *SGD_DECAY_FLAGS, "--grad-round", "stochastic",
                                    "--seed", str(s)])
            for s in seeds] + [
            # ... or with each weight's rounding remainder carried into its next step (--step-carry, §5).
            (f"vgg7-int-carry-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                      str(a.batch_size or 128), *SGD_DECAY_FLAGS, "--step-carry", "--seed", str(s)])
            for s in seeds] + [
            # ... and with two bits of room for every weight: with the carry a coarser master unit loses no step.
            (f"vgg7-int-carry-wh2-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                          str(a.batch_size or 128), *SGD_DECAY_FLAGS, "--step-carry",
                                          "--weight-headroom", "2", "--seed", str(s)])
            for s in seeds] + [
            # ... and with 12 fractional bits below a master unit (--step-frac-bits, §5): the momentum average and
            # the weight decay of the annealed rates no longer round to 2**-8 unit.
            (f"vgg7-int-carry-f12-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                          str(a.batch_size or 128), *SGD_DECAY_FLAGS, "--step-carry",
                                          "--step-frac-bits", "12", "--seed", str(s)])
            for s in seeds] + [
            # ... and without the weight decay: does the decay still cost the integer model at this length?
            (f"vgg7-int-carry-nodecay-s{s}", ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size",
                                              str(a.batch_size or 128), *SGD_STEP_FLAGS, "--step-carry",
                                              "--seed", str(s)])
            for s in seeds]
    if name == "cifar-select":  # choose the int gb schedule / accumulator and the float lr on validation
        common = ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128),
                  "--seed", str(seeds[0])]
        ints = [("gb543", "5,4,3@0.5,0.75", 8), ("gb432", "4,3,2@0.5,0.75", 8), ("gb5432", "5,4,3,2@0.25,0.5,0.75", 8),
                ("gb543-acc16", "5,4,3@0.5,0.75", 16), ("gb432-acc16", "4,3,2@0.5,0.75", 16)]
        runs = [(f"vgg7-int-{tag}", common + ["--gb-schedule", gb, "--accumulator-bits", str(acc)])
                for tag, gb, acc in ints]
        runs += [(f"vgg7-float-lr{lr}", common + ["--arith", "float", "--lr", lr]) for lr in ("0.02", "0.05")]
        return runs
    if name == "cifar-gb":  # int gb schedules with 16-bit accumulators (some decay several bits per phase)
        common = ["--model", "vgg-small-7", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128),
                  "--seed", str(seeds[0]), "--accumulator-bits", "16"]
        runs = [(f"vgg7-int-gb{gb.split('@')[0].replace(',', '_')}", common + ["--gb-schedule", gb])
                for gb in ("4,3,2@0.5,0.75", "4,1,-2@0.5,0.75", "3,0,-3@0.5,0.75", "3,2,1@0.5,0.75",
                           "3,3,2@0.5,0.75")]
        for offsets in ("0,0,0,0,0,0,2", "-1,0,0,0,0,0,2"):  # per-layer offsets from results/update-scale
            tag = "".join(f"L{i}{int(o):+d}" for i, o in enumerate(offsets.split(",")) if int(o))
            runs.append((f"vgg7-int-gb4_3_2-{tag}", common + ["--gb-schedule", "4,3,2@0.5,0.75",
                                                            f"--gb-offsets={offsets}"]))
        return runs + [("vgg7-float-lr0.05", common[:-2] + ["--arith", "float", "--lr", "0.05"])]
    if name == "numerics2-mnist":  # defaults chosen on validation + the ablation of numerics 2 (issue 12)
        common = ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128),
                  "--seed", str(seeds[0])]
        variants = {
            "default": [],
            # candidates for the defaults (validation only)
            "gb654": ["--gb-schedule", "6,5,4@0.5,0.75"],
            "gb5432": ["--gb-schedule", "5,4,3,2@0.25,0.5,0.75"],
            "k2": ["--momentum-shift", "2"],
            "k4": ["--momentum-shift", "4"],
            "wd19": ["--decay-shift", "19"],
            "gb5432-k4": ["--gb-schedule", "5,4,3,2@0.25,0.5,0.75", "--momentum-shift", "4"],
            "gb5432-k0": ["--gb-schedule", "5,4,3,2@0.25,0.5,0.75", "--momentum-shift", "0"],
            # ablation: each of the items 1-4 off, and all off (the first version's numerics)
            **_ABLATION_OFF,
        }
        # The base of the selection: the paper's schedule and the errors' rounding of the time.
        base = ["--gb-schedule", "5,4,3@0.5,0.75", "--err-round", "nearest"]
        runs = [(f"lenet-int-{tag}", common + [*base[("--gb-schedule" in extra) * 2:], *extra])
                for tag, extra in variants.items()]
        runs.append(("lenet-float", common + ["--arith", "float"]))  # lr 0.05: tuned at batch 64 (results/lr_sweep)
        return runs + [(f"lenet-float-lr{lr}", common + ["--arith", "float", "--lr", lr]) for lr in ("0.02", "0.1")]
    if name == "cifar-quarter-smoke":  # default flags on CIFAR-10 where this CPU allows: VGG-small-7-quarter
        return [(f"q-{arith}-s{s}", ["--model", "vgg-small-7-quarter", "--arith", arith, "--epochs", str(a.epochs),
                                     "--batch-size", str(a.batch_size or 128), "--seed", str(s)])
                for arith in ("int", "float") for s in seeds]
    if name == "mnist-defaults":  # issue 12's MNIST target: default flags, 5 epochs, batch 128, 3 seeds
        runs = [(f"lenet-{arith}-s{s}", ["--model", "lenet", "--arith", arith, "--epochs", str(a.epochs),
                                         "--batch-size", str(a.batch_size or 128), "--seed", str(s)])
                for arith in ("int", "float") for s in seeds]
        # The float twin at the lr chosen on validation at batch 128 (results/numerics2-mnist), where lr 0.05 died.
        return runs + [(f"lenet-float-lr0.02-s{s}", ["--model", "lenet", "--arith", "float", "--lr", "0.02",
                                                     "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128),
                                                     "--seed", str(s)]) for s in seeds]
    if name == "static-inference":  # issue 15: runs whose checkpoints benchmarks/static_inference.py evaluates
        return [("lenet-int-s0", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size",
                                  str(a.batch_size or 128), "--seed", "0"]),
                ("q-int-s0", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                              str(a.batch_size or 128), "--seed", "0"])]
    if name == "user-model":  # issue 13: the README's own-model example (MODULE:FACTORY), both arithmetics
        return [(f"resnet-{arith}-s{s}", ["--model", "benchmarks.user_models:small_resnet", "--dataset", "mnist",
                                          "--arith", arith, "--epochs", str(a.epochs),
                                          "--batch-size", str(a.batch_size or 64), "--seed", str(s)])
                for arith in ("int", "float") for s in seeds] + [
            # 2026-12-02: the integer arm again with that day's defaults (float SGD's step); the resnet-int-s*
            # rows ran the per-tensor step (add --step-scale max --full-range-init --gb-schedule
            # 5,4,3,2@0.25,0.5,0.75 to their commands to reproduce them).
            (f"resnet-int-sgd-s{s}", ["--model", "benchmarks.user_models:small_resnet", "--dataset", "mnist",
                                      "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 64),
                                      "--seed", str(s)]) for s in seeds]
    if name == "resnet-norm":  # issue 14: normalisation choices (and the float twin's lr) on a short ResNet-20 run
        common = ["--dataset", "cifar10", "--batch-size", str(a.batch_size or 128), "--epochs", str(a.epochs)]
        return ([(f"r20-l1bn-int-s{s}", ["--model", "resnet-20", *common, "--seed", str(s)]) for s in seeds]
                + [(f"r20-nonorm-int-s{s}", ["--model", "benchmarks.resnet_variants:resnet20_no_norm", *common,
                                             "--seed", str(s)]) for s in seeds]
                + [(f"r20-float-lr{lr}-s{s}", ["--model", "resnet-20", "--arith", "float", "--lr", lr, *common,
                                                "--seed", str(s)]) for lr in ("0.05", "0.1", "0.2") for s in seeds])
    if name == "resnet20-cifar":  # issue 14: ResNet-20 to convergence (resumable: --resume)
        common = ["--model", "resnet-20", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        return ([(f"r20-int-s{s}", [*common, "--seed", str(s)]) for s in seeds]
                + [(f"r20-int-errsto-s{s}", [*common, "--err-round", "stochastic", "--seed", str(s)]) for s in seeds]
                + [(f"r20-float-s{s}", [*common, "--arith", "float", "--seed", str(s)]) for s in seeds])
    if name == "resnet-update":  # issue 14: the update's step size for ResNet-20 on a short run (validation)
        common = ["--model", "resnet-20", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        norms = ",".join(f"{layer}=-3" for layer in _RESNET20_NORMS)
        arms = {"default": [], "bn-gb-3": ["--gb-offsets", norms], "decay18": ["--decay-shift", "18"],
                "gb-minus2": ["--gb-schedule", "3,2,1,0@0.25,0.5,0.75"],
                "gb-wide": ["--gb-schedule", "5,3,1,-1@0.25,0.5,0.75"]}
        return ([(f"r20u-{arm}-s{s}", [*common, *extra, "--seed", str(s)]) for arm, extra in arms.items()
                 for s in seeds]
                + [(f"r20u-float-s{s}", [*common, "--arith", "float", "--lr", "0.05", "--seed", str(s)])
                   for s in seeds])
    if name == "resnet-errors":  # issue 14: the errors' rounding on a mid-length ResNet-20 run (validation)
        common = ["--model", "resnet-20", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        return ([(f"r20e-{arm}-s{s}", [*common, "--err-round", mode, "--seed", str(s)])
                 for arm, mode in (("nearest", "nearest"), ("stochastic", "stochastic"), ("psr", "pseudo_stochastic"))
                 for s in seeds]
                + [(f"r20e-float-s{s}", [*common, "--arith", "float", "--lr", "0.05", "--seed", str(s)])
                   for s in seeds]
                # Issue 12: share-bounded activation clipping (docs/numerics.md §2) on a network with batch norm and
                # residual adds, whose rescales it clips too; stochastic errors, as the default.
                + [(f"r20e-clip2k{k}-s{s}", [*common, "--act-clip-bits", "2", "--act-clip-share", str(k),
                                             "--seed", str(s)])
                   for k in (5, 6, 8) for s in seeds]
                # Issue 12: float SGD's own step on the twin's recipe (cifar-quarter's q-int-sgd).
                + [(f"r20e-sgd-s{s}", [*common, *SGD_STEP_FLAGS, "--seed", str(s)]) for s in seeds]
                # ... and with the twin's weight decay (cifar-quarter's q-int-sgd-wd17).
                + [(f"r20e-sgd-wd17-s{s}", [*common, *SGD_DECAY_FLAGS, "--seed", str(s)])
                   for s in seeds])
    if name == "cifar-quarter":  # issue 12: the converged CIFAR-10 comparison that fits this CPU (resumable)
        runs = [(f"q-{arith}-s{s}", ["--model", "vgg-small-7-quarter", "--arith", arith, "--epochs", str(a.epochs),
                                     "--batch-size", str(a.batch_size or 128), "--seed", str(s)])
                for arith in ("int", "float") for s in seeds]
        # The integer arm on the float twin's annealing (x0.1 at 50 %, x0.01 at 75 %: 100x in all, the default's
        # 5,4,3,2 anneals 8x): does the late gap come from the schedule? A diagnostic, not a tuned arm.
        return runs + [(f"q-int-anneal100-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs),
                                                  "--batch-size", str(a.batch_size or 128),
                                                  "--gb-schedule", "5,5/3,-5/3@1/2,3/4", "--seed", str(s)])
                       for s in seeds] + [
            # Two bits of weight headroom (docs/numerics.md §6) with gb lowered by 2, so the first steps are the
            # default's in real terms: the trained default's weights pile up at their int16 rails (the init's
            # range), while the float twin's grow 2-7x past it (results/cifar-quarter/weight-range.md).
            (f"q-int-h2-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                                str(a.batch_size or 128), "--weight-headroom", "2", "--gb-schedule",
                                "3,2,1,0@0.25,0.5,0.75", "--seed", str(s)]) for s in seeds] + [
            # Integer weight decay at the float twin's strength: its lr * wd / (1 - momentum) = 0.5 * 5e-4 ~ 2**-12
            # of the weight per step at lr 0.05, and 2**(gb - D) * batch / batch_ref = 2**(4 - D) at gb 5, batch
            # 128 (docs/numerics.md §5), so D = 16; both decay with the schedule. The twin has weight decay, the
            # integer default none (chosen on 1 MNIST epoch, where D = 19 changed nothing).
            (f"q-int-wd16-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                                  str(a.batch_size or 128), "--decay-shift", "16", "--seed", str(s)])
            for s in seeds] + [
            # Activation clipping (docs/numerics.md §2): the trained default's int8 activations use a few LSBs
            # (median nonzero magnitude 3-7 of 127, the 99th percentile 19-37) because each rescale fits the batch's
            # largest value; a shift c bits smaller doubles (c = 1) or quadruples (c = 2) their resolution and
            # saturates <= 0.04 % (c = 1) or 0.06-1.8 % (c = 2) of the values (results/cifar-quarter/activations.md).
            (f"q-int-clip{c}-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                                     str(a.batch_size or 128), "--act-clip-bits", str(c), "--seed", str(s)])
            for c in (1, 2) for s in seeds] + [
            # c = 2 slows LeNet's first steps (results/mnist-clip/short-run.md): early activations are not yet
            # long-tailed, so it saturates many. Bounding the saturated share at 2**-K clips only as far as the
            # batch's tail allows (K = 6: 1.6 %, about what the c = 0 model's c = 2 would saturate; K = 4, 5: 6, 3 %).
            (f"q-int-clip2k{k}-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                                       str(a.batch_size or 128), "--act-clip-bits", "2", "--act-clip-share", str(k),
                                       "--seed", str(s)])
            for k in (6, 5, 4, 8) for s in seeds] + [
            # Initial weights within the Xavier bound, as the float twin draws them (--no-full-range-init): the
            # default's full int8 range is 1.05-1.8x the bound per layer, so its initial logits are ~8x the twin's
            # (the product over the 7 layers of a network without normalisation).
            (f"q-int-xinit-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                                   str(a.batch_size or 128), "--no-full-range-init", "--seed", str(s)])
            for s in seeds] + [
            # Float SGD's own step (--step-scale exponent: proportional to the summed gradient, not rescaled per
            # tensor and step) at the twin's lr 0.05 (gb 5) and 100x annealing, on the twin's initial scale: does
            # the per-tensor rescale cause the late underfitting that twin-diagnostics/upd-s0 points at?
            (f"q-int-sgd-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                                 str(a.batch_size or 128), *SGD_STEP_FLAGS, "--seed", str(s)])
            for s in seeds] + [
            # Float SGD's step is float's recipe without its weight decay: the twin decays lr * wd / (1 - momentum)
            # = 2**-12 of each weight a step, which is D = 17 at gb 5 (docs/numerics.md §5); it scales with the
            # schedule as the twin's does.
            (f"q-int-sgd-wd17-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                                      str(a.batch_size or 128), *SGD_DECAY_FLAGS,
                                      "--seed", str(s)])
            for s in seeds] + [
            # With float SGD's step, weight headroom changes no real step (the shift follows the master exponent,
            # docs/numerics.md §5, §6): it only lets a weight grow 2**h times past its initial range before the
            # int16 master saturates, as the twin's weights grow 2-7x (weight-range.md).
            (f"q-int-sgd-h2-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                                    str(a.batch_size or 128), *SGD_STEP_FLAGS, "--weight-headroom", "2",
                                    "--seed", str(s)])
            for s in seeds] + [
            # 2026-12-03: two bits more room for the first and last layers only (cifar-vgg7's vgg7-int-eh2), with
            # the decay: does it hold at the converged length?
            (f"q-int-eh2-s{s}", ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size",
                                 str(a.batch_size or 128), *END_HEADROOM_FLAGS, "--seed", str(s)])
            for s in seeds]
    if name == "mnist-clip":  # issue 12: does activation clipping (cifar-quarter's q-int-clip*) hold on MNIST
        # The default arm is mnist-anneal's lenet-int-default-s*: the same commands.
        return [(f"lenet-int-clip{c}-s{s}", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size",
                                             str(a.batch_size or 128), "--act-clip-bits", str(c), "--seed", str(s)])
                for c in (1, 2) for s in seeds] + [
            (f"lenet-int-clip2k{k}-s{s}", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size",
                                           str(a.batch_size or 128), "--act-clip-bits", "2", "--act-clip-share",
                                           str(k), "--seed", str(s)])
            for k in (6, 5, 4, 8) for s in seeds]
    if name == "cifar-quarter-lr":  # issue 12: the float twin's lr for the quarter VGG, chosen on validation
        # lr 0.01 (the then untuned fallback) is err-round-check's q-float-s0 (run before lr 0.05 became the default).
        q = ["--model", "vgg-small-7-quarter", "--arith", "float", "--epochs", str(a.epochs), "--batch-size",
             str(a.batch_size or 128)]
        return [(f"q-float-lr{lr}-s{s}", [*q, "--lr", lr, "--seed", str(s)]) for lr in ("0.02", "0.05", "0.1")
                for s in seeds]
    if name == "cifar-quarter-gb":  # issue 12: the integer arm's counterpart, its gb schedule (validation)
        # The default 5,4,3,2 (q-int-default) at seed 0 is err-round-check's q-int-errsto-s0: the same command.
        q = ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        runs = [(f"q-int-default-s{s}", [*q, "--seed", str(s)]) for s in seeds]
        runs += [(f"q-int-gb{gb.split('@')[0].replace(',', '')}-s{s}", [*q, "--gb-schedule", gb, "--seed", str(s)])
                for gb in ("6,5,4,3@0.25,0.5,0.75", "4,3,2,1@0.25,0.5,0.75", "7,6,5,4@0.25,0.5,0.75") for s in seeds]
        # Per-layer offsets on the default schedule: the first layer's step halved, the classifier's ×4 (the
        # offsets results/cifar-gb chose for VGG-small-7 from results/update-scale's per-layer step ratios).
        return runs + [(f"q-int-L0{first:+d}L6{last:+d}-s{s}", [*q, f"--gb-offsets={first},0,0,0,0,0,{last}",
                                                                 "--seed", str(s)])
                       for first, last in ((-1, 2), (0, 2)) for s in seeds] + [
            # Weight headroom h (docs/numerics.md §6): weights may grow 2**h past their full-range initial values
            # before the int16 master saturates; gb - h keeps the default's initial real steps.
            (f"q-int-h{h}-s{s}", [*q, "--weight-headroom", str(h), "--gb-schedule",
                                  ",".join(str(g - h) for g in (5, 4, 3, 2)) + "@0.25,0.5,0.75", "--seed", str(s)])
            for h in (1, 2) for s in seeds]
    if name == "cifar-quarter-step":  # issue 12: float SGD's step (--step-scale exponent) on the quarter VGG
        # The float twin's schedule (x0.1 at 50 %, x0.01 at 75 %) in gb: log2(10) ~ 10/3. gb 5 is float's lr 0.05.
        q = ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128),
             "--step-scale", "exponent"]
        arms = {f"g{g}": ["--gb-schedule", f"{g},{g * 3 - 10}/3,{g * 3 - 20}/3@1/2,3/4"] for g in (3, 4, 5, 6)}
        arms["g5-wd17"] = [*arms["g5"], "--decay-shift", "17"]  # float's wd 5e-4 at lr 0.05 (docs/numerics.md §5)
        arms["g5-int-schedule"] = ["--gb-schedule", "5,4,3,2@0.25,0.5,0.75"]
        # Float's step on float's initial weights: --no-full-range-init keeps the init within the Xavier bound the
        # twin draws from (the full-range init is up to 2x it), so rule, rate and init all match the twin's.
        arms["g5-narrow"] = [*arms["g5"], "--no-full-range-init"]
        runs = [(f"q-exp-{tag}-s{s}", [*q, *extra, "--seed", str(s)]) for tag, extra in arms.items() for s in seeds]
        # The default per-tensor step ("max") with today's stochastic errors: the larger steps that helped with
        # nearest errors in cifar-quarter-gb (which ran with the CLI's then default, nearest).
        m = q[:-2]
        return runs + [(f"q-max-{tag}-s{s}", [*m, *extra, "--seed", str(s)]) for tag, extra in (
            ("gb6543", ["--gb-schedule", "6,5,4,3@0.25,0.5,0.75"]), ("L0-1L6+2", ["--gb-offsets=-1,0,0,0,0,0,2"]),
            ("act-sto", ["--act-round", "stochastic"]),  # a diagnostic: does the forward's rounding slow fitting?
            # The per-tensor step on float's schedule (x0.1 at 50 %, x0.01 at 75 %): it anneals 100x, the default 8x.
            ("float-schedule", ["--gb-schedule", "5,5/3,-5/3@1/2,3/4"]))
            for s in seeds]
    if name == "mnist-anneal":  # issue 12: does the float twin's 100x annealing hold on LeNet / MNIST (validation)
        # The default schedule's arm repeats err-round-check's lenet-int-errsto-s* (the same commands) with today's
        # evaluation (static inference, the logits' headroom), so both arms are measured alike.
        common = ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        return [(f"lenet-int-{tag}-s{s}", [*common, *extra, "--seed", str(s)])
                for tag, extra in (("anneal100", ["--gb-schedule", "5,5/3,-5/3@1/2,3/4"]), ("default", []))
                for s in seeds]
    if name == "mnist-sgd":  # issue 12: does float SGD's own step (cifar-quarter's q-int-sgd) hold on LeNet / MNIST
        # The default arm is mnist-anneal's lenet-int-default-s*: the same commands.
        return ([(f"lenet-int-sgd-s{s}", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size",
                                          str(a.batch_size or 128), *SGD_STEP_FLAGS, "--seed", str(s)]) for s in seeds]
                # ... and with the twin's weight decay (cifar-quarter's q-int-sgd-wd17, docs/numerics.md §5)?
                + [(f"lenet-int-sgd-wd17-s{s}", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size",
                                                 str(a.batch_size or 128), *SGD_DECAY_FLAGS,
                                                 "--seed", str(s)]) for s in seeds]
                # ... and with two bits more room for the first and last layers (cifar-vgg7's vgg7-int-eh2)?
                + [(f"lenet-int-eh2-s{s}", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size",
                                            str(a.batch_size or 128), *END_HEADROOM_FLAGS,
                                            "--seed", str(s)]) for s in seeds]
                # ... and with the step carry (cifar-vgg7's vgg7-int-carry, docs/numerics.md §5)?
                + [(f"lenet-int-carry-s{s}", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size",
                                              str(a.batch_size or 128), *SGD_DECAY_FLAGS, "--step-carry",
                                              "--seed", str(s)]) for s in seeds])
    if name == "mnist-headroom":  # issue 12: does two bits of weight headroom hold on LeNet / MNIST (validation)
        # The default arm is mnist-anneal's lenet-int-default-s*: the same commands.
        return [(f"lenet-int-h2-s{s}", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size",
                                        str(a.batch_size or 128), "--weight-headroom", "2", "--gb-schedule",
                                        "3,2,1,0@0.25,0.5,0.75", "--seed", str(s)]) for s in seeds]
    if name == "mnist-decay":  # issue 12: does the float twin's weight decay (D = 16, cifar-quarter) hold on MNIST
        # The default arm is mnist-anneal's lenet-int-default-s*: the same commands.
        return [(f"lenet-int-wd16-s{s}", ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size",
                                          str(a.batch_size or 128), "--decay-shift", "16", "--seed", str(s)])
                for s in seeds]
    if name == "mnist-offsets":  # issue 12: does the first/last-layer gb offset hold on LeNet / MNIST (validation)
        common = ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        return [(f"lenet-int-{tag}-s{s}", [*common, *extra, "--seed", str(s)])
                for tag, extra in (("default", []), ("L0-1L3+2", ["--gb-offsets=-1,0,0,2"])) for s in seeds]
    if name == "err-round-check":  # issue 12/14: stochastic error rounding on the other nets and data sets
        runs = [(f"lenet-int-err{mode[:3]}-s{s}", ["--model", "lenet", "--err-round", mode, "--epochs", str(a.epochs),
                                                   "--batch-size", str(a.batch_size or 128), "--seed", str(s)])
                for mode in ("nearest", "stochastic") for s in seeds]
        q = ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        runs += [(f"q-int-err{mode[:3]}-s{s}", [*q, "--err-round", mode, "--seed", str(s)])
                 for mode in ("nearest", "stochastic") for s in seeds]
        return runs + [(f"q-float-s{s}", [*q, "--arith", "float", "--seed", str(s)]) for s in seeds]
    if name == "cifar-ablation":  # issue 12: items 1-4 (and stochastic errors) each off, on CIFAR-10 (validation)
        q = ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        # The base (defaults), errors-nearest and float arms are err-round-check's q-* runs: the same commands.
        return ([(f"q-{tag}-s{s}", [*q, *extra, "--seed", str(s)]) for tag, extra in _ABLATION_OFF.items()
                 for s in seeds]
                # The same items against the defaults since 2026-12-02 (float SGD's step, the twin's weight decay,
                # stochastic errors), named flags so the arms keep their meaning if a default moves again.
                + [(f"q-{tag}-s{s}", [*q, *SGD_DECAY_FLAGS, *extra, "--seed", str(s)])
                   for tag, extra in _ABLATION_SGD_OFF.items() for s in seeds]
                # ... and the step carry on (an option since 2026-12-03, docs/numerics.md §5).
                + [(f"q-sgd-carry-s{s}", [*q, *SGD_DECAY_FLAGS, "--step-carry", "--seed", str(s)]) for s in seeds])
    if name == "cifar-dropout":  # issue 12: a dropout mask per element (the float twin's) or per batch (validation)
        # Seed 0: sample is results/cifar-dropout/probe-sample-s0 (the same draws), batch err-round-check's
        # q-int-errsto-s0 (the same command).
        q = ["--model", "vgg-small-7-quarter", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        return ([(f"q-int-dropout-{mask}-s{s}", [*q, "--dropout", mask, "--seed", str(s)])
                 for mask in ("sample", "batch") for s in seeds]
                # Issue 12: the float twin's recipe in integers (cifar-quarter's q-int-sgd) at this length, against
                # the per-element default (the sample arm).
                + [(f"q-int-dropout-sample-sgd-s{s}", [*q, *SGD_STEP_FLAGS, "--seed", str(s)]) for s in seeds])
    if name == "mnist-ablation-items":  # issue 12: items 1-4 each off on MNIST with today's defaults (validation)
        # The base (defaults) is err-round-check's lenet-int-errsto-s*: the same commands.
        common = ["--model", "lenet", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size or 128)]
        return ([(f"lenet-{tag}-s{s}", [*common, *extra, "--seed", str(s)]) for tag, extra in _ABLATION_OFF.items()
                 for s in seeds]
                # Against the defaults since 2026-12-02: the base is mnist-sgd's lenet-int-sgd-wd17-s* and the decay's
                # "off" its lenet-int-sgd-s* (the same commands), so sgd-base is not run again here.
                + [(f"lenet-{tag}-s{s}", [*common, *SGD_DECAY_FLAGS, *extra, "--seed", str(s)])
                   for tag, extra in _ABLATION_SGD_OFF.items() if tag != "sgd-base" for s in seeds]
                # ... and all of them off: the first version's numerics (docs/numerics.md §10's reproduction flags,
                # its gb schedule 5,4,3@0.5,0.75), the MNIST baseline.
                + [(f"lenet-first-s{s}", [*common, *FIRST_NUMERICS_FLAGS, "--seed", str(s)]) for s in seeds])
    if name == "digits":  # issue 12: default flags on a real data set they were not chosen on (validation)
        data = _digits_npz()
        common = ["--model", "benchmarks.user_models:digits_net", "--dataset", data, "--epochs", str(a.epochs)]
        tag = f"e{a.epochs}"
        return ([(f"digits-int-{tag}-s{s}", [*common, "--seed", str(s)]) for s in seeds]
                # the step carry (docs/numerics.md §5), an option since 2026-12-03 ...
                + [(f"digits-int-carry-{tag}-s{s}", [*common, "--step-carry", "--seed", str(s)]) for s in seeds]
                # numerics 2's first defaults (the per-tensor step, until 2026-12-02; docs/numerics.md §10) ...
                + [(f"digits-int-pertensor-{tag}-s{s}", [*common, "--step-scale", "max", "--full-range-init",
                                                         "--gb-schedule", "5,4,3,2@0.25,0.5,0.75",
                                                         "--decay-shift", "0", "--seed", str(s)]) for s in seeds]
                # ... and the float twin at the untuned fallback lr 0.01 (its default for a user's model) and the
                # rates a user would sweep, chosen on validation.
                + [(f"digits-float-lr{lr}-{tag}-s{s}", [*common, "--arith", "float", "--lr", lr, "--seed", str(s)])
                   for lr in ("0.01", "0.02", "0.05", "0.1") for s in seeds])
    raise SystemExit(f"unknown suite {name!r}")


def _digits_npz() -> str:
    """runs/digits.npz (benchmarks/digits_npz.py, written on first use), relative to the repository root."""
    path = ROOT / "runs" / "digits.npz"
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "digits_npz.py"), "--out", str(path)], check=True)
    return str(path.relative_to(ROOT))


#: The ablation of issue 12: each item switched off alone, and all of them (the first version's numerics).
_ABLATION_OFF = {
    "off-softmax": ["--softmax", "coarse"],
    "off-scales": ["--no-input-std", "--no-full-range-init"],
    "off-batch": ["--batch-ref", "0"],
    "off-momentum": ["--momentum-shift", "0"],
    "off-all": ["--softmax", "coarse", "--no-input-std", "--no-full-range-init", "--batch-ref", "0",
                "--momentum-shift", "0", "--accumulator-bits", "8", "--err-round", "nearest"],
}

#: ... and each item off against the defaults since 2026-12-02 (SGD_DECAY_FLAGS). Item 2's initial scale is already
#: the float twin's there (--no-full-range-init, docs/numerics.md §8), so its "off" is the raw-pixel input alone; the
#: weight decay's own "off" is cifar-dropout's q-int-dropout-sample-sgd (the same command with --decay-shift 0).
_ABLATION_SGD_OFF = {
    "sgd-base": [],
    "sgd-off-softmax": ["--softmax", "coarse"],
    "sgd-off-scales": ["--no-input-std"],
    "sgd-off-batch": ["--batch-ref", "0"],
    "sgd-off-momentum": ["--momentum-shift", "0"],
    "sgd-off-errors": ["--err-round", "nearest"],
    # Without momentum gb 5 is plain SGD at lr 0.5 (docs/numerics.md §5); these are the no-momentum arms at float
    # SGD's lr 0.05 and 0.125 (gb 5/3 and 3, 2**(gb - 6)), the same 100x annealing (2026-12-03).
    "sgd-off-momentum-lr0.05": ["--momentum-shift", "0", "--gb-schedule", "5/3,-5/3,-5@1/2,3/4"],
    "sgd-off-momentum-lr0.125": ["--momentum-shift", "0", "--gb-schedule", "3,-1/3,-11/3@1/2,3/4"],
}

#: ResNet-20's batch-norm layers (niti.models.architectures), for per-layer gb offsets.
_RESNET20_NORMS = ("stem.1", *(f"layer{g}.{b}.bn{k}" for g in (1, 2, 3) for b in range(3) for k in (1, 2)),
                   "layer2.0.shortcut.1", "layer3.0.shortcut.1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=["mnist-1epoch", "mnist-seeds", "mnist-ablation", "cifar-vgg7", "cifar-select",
                                      "cifar-gb", "numerics2-mnist", "mnist-defaults", "cifar-quarter-smoke",
                                      "user-model", "static-inference", "resnet-norm", "resnet20-cifar",
                                      "resnet-update", "resnet-errors", "err-round-check",
                                      "cifar-quarter", "cifar-ablation", "cifar-quarter-lr",
                                      "cifar-quarter-gb", "mnist-offsets", "mnist-anneal", "mnist-headroom", "mnist-decay",
                                      "mnist-clip", "cifar-quarter-step", "mnist-ablation-items", "cifar-dropout", "mnist-sgd",
                                      "digits"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seeds", default="0")
    p.add_argument("--resume", action="store_true",
                   help="continue runs whose run directory holds a checkpoint (niti train --resume) instead of "
                        "starting them again")
    p.add_argument("--resume-from", default=None,
                   help="with --resume: where a run whose run directory has no checkpoint finds one "
                        "(<DIR>/<run>/checkpoint.pt, as benchmarks/snapshot.py commits it; runs/ is not kept between "
                        "working sessions); default <results>/partial")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--lr", type=float, default=None, help="float runs: learning rate (default: niti's tuned value)")
    p.add_argument("--gb-schedule", default=None, help="integer runs: gradient bit-width schedule (default: niti's)")
    p.add_argument("--accumulator-bits", type=int, choices=[8, 16], default=None,
                   help="integer runs: weight accumulator width (default: niti's)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--results", default=None, help="default results/<suite>")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads threads)")
    p.add_argument("--only", default=None, help="comma-separated run names to (re)run; others are kept")
    a = p.parse_args()
    results = Path(a.results or ROOT / "results" / a.suite)
    results.mkdir(parents=True, exist_ok=True)
    rows_path = results / "runs.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else {}
    only = set(a.only.split(",")) if a.only else None
    todo = [(run, args) for run, args in suite_runs(a.suite, a) if only is None or run in only]
    lock = threading.Lock()

    def one(run: str, args: list[str]) -> int:
        out = Path(a.runs_dir) / a.suite / run
        carried = Path(a.resume_from or results / "partial") / run / "checkpoint.pt"
        if a.resume and not (out / "checkpoint.pt").exists() and carried.exists():
            out.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "metrics.jsonl", "steps.jsonl", "checkpoint.pt"):  # the logs as they stood
                if (carried.parent / name).exists():
                    shutil.copy(carried.parent / name, out / name)
            print(f"resuming {run} from the committed {carried}", flush=True)
        if a.resume and (out / "checkpoint.pt").exists():
            cmd = [sys.executable, "-m", "niti", "train", "--resume", str(out), "--threads", str(a.threads),
                   "--no-progress"]
        else:
            if out.exists():
                shutil.rmtree(out)
            cmd = [sys.executable, "-m", "niti", "train", *args, "--data-dir", a.data_dir, "--threads",
                   str(a.threads), "--out", str(out), "--no-progress"]
        print("$", shlex.join(cmd), flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT)
        wall = time.time() - t0
        if proc.returncode != 0:
            print(f"run {run} failed with exit code {proc.returncode}", file=sys.stderr)
            return proc.returncode
        dest = results / run
        dest.mkdir(exist_ok=True)
        for f in ("summary.json", "metrics.jsonl", "steps.jsonl"):
            shutil.copy(out / f, dest / f)
        summary = json.loads((out / "summary.json").read_text())
        row = {"command": "python -m niti train " + shlex.join(args + ["--threads", str(a.threads)]),
               "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
               "wall_seconds": round(wall, 1), "parallel_jobs": a.jobs,
               **{k: summary[k] for k in ("arith", "final_test_accuracy", "final_val_accuracy", "best_val_accuracy", "epochs",
                                          "seconds", "images_per_second", "weights_sha256")}}
        with lock:  # re-read: another invocation may have added rows meanwhile
            if rows_path.exists():
                rows.update({k: v for k, v in json.loads(rows_path.read_text()).items() if k != run})
            rows[run] = row
            atomic_write_bytes(rows_path, (json.dumps(rows, indent=2, sort_keys=True) + "\n").encode())
        return 0

    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        codes = list(pool.map(lambda ra: one(*ra), todo))
    if any(codes):
        return next(c for c in codes if c)
    write_report(a.suite, results, rows)
    return 0


def write_report(suite: str, results: Path, rows: dict) -> None:
    lines = [f"# {suite}", "", "Generated by `benchmarks/train_suites.py`; every number below comes from the "
             "summary.json beside it.", ""]
    intro = results / "intro.md"  # hand-written context (what was chosen and why) kept across re-runs
    if intro.exists():
        lines += [intro.read_text().strip(), ""]
    lines += ["| run | arith | epochs | final test acc (%) | best val acc (%) | train s | images/s | wall s | date "
              "| command |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for run, r in sorted(rows.items()):
        lines.append(f"| {run} | {r['arith']} | {r['epochs']} | {r['final_test_accuracy']:.2f} | "
                     f"{r['best_val_accuracy']:.2f} | {r['seconds']:.0f} | {r['images_per_second']:.0f} | "
                     f"{r['wall_seconds']:.0f} | {r['date']} | `{r['command']}` |")
    by_group: dict[str, list[float]] = {}  # runs that differ only in their seed
    for run, r in rows.items():
        by_group.setdefault(re.sub(r"-s\d+$", "", run), []).append(r["final_test_accuracy"])
    lines.append("")
    for group, accs in sorted(by_group.items()):
        spread = f"sd {statistics.stdev(accs):.2f}, " if len(accs) > 1 else ""
        lines.append(f"- {group}: mean final test accuracy {statistics.mean(accs):.2f} % ({spread}n = {len(accs)})")
    machines = sorted({r["machine"] for r in rows.values()})
    lines += ["", "Machine: " + "; ".join(machines), ""]
    try:
        from niti.plot import plot_runs

        plot_runs([results / run for run in sorted(rows)], results / "curves.png", title=suite)
        lines.append("![curves](curves.png)")
    except Exception as exc:  # a plot failure must not lose the table
        lines.append(f"(plot failed: {exc})")
    (results / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
