"""``niti bench``: integer vs float PyTorch training-step speed and memory on this machine.

Every measurement runs in its own fresh interpreter, one after another:
- the integer model (``_integer_worker``): median steady-state ``train_step``
  time, a profiled step broken down per layer into integer products
  (``aten::_int_mm``) and everything else, peak memory, and a ``_int_mm``
  micro-benchmark giving this CPU's measured int8 peak;
- the same architecture in float PyTorch (``niti/_float_twin.py``, run as a
  script that imports torch only, so nothing niti sets in its own process
  touches the baseline): fp32 channels_last with oneDNN, autograd and SGD
  with momentum, and bf16 autocast where the CPU has native bf16.

Memory: each worker reads its resident set (``VmRSS``) once the inputs
exist and before the model is built, resets the kernel's peak mark
(``/proc/self/clear_refs``) after warm-up, and reports ``VmHWM`` minus that
starting RSS: weights, optimizer state, workspaces and the activation peak
of steady-state steps.  The integer worker compiles its fused chains on a
batch of 2 before the starting RSS, so compiler memory is not counted.

Timings on a machine shared with other work are noisy; the result records
the load average before and after so a reader can tell.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .heap import child_env as heap_child_env

__all__ = ["run_bench", "add_arguments", "main", "machine_info", "int8_peak"]

_FLOAT_TWIN = Path(__file__).with_name("_float_twin.py")


# ------------------------------------------------------------------ machine


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere autocast emulates it slowly."""
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_info() -> dict:
    flags = _cpu_flags()
    return {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "avx512_vnni": "avx512_vnni" in flags,
            "avx_vnni": "avx_vnni" in flags, "amx_int8": "amx_int8" in flags, "amx_bf16": "amx_bf16" in flags,
            "native_bf16": native_bf16()}


# -------------------------------------------------------------- int8 peak

#: Large products in the layouts the integer step uses; the best of them is "the measured int8 peak".
_PEAK_SHAPES = ((8192, 2304, 512), (16384, 1152, 256), (4096, 4608, 512))


def int8_peak(threads: int, repeats: int = 5) -> dict:
    """Best integer-product ops/s (2·M·K·N per second) over a few large shapes, on ``threads``, of the CPU
    product the step uses: ``torch._int_mm`` with VNNI, else niti's AVX2 kernel or the int32 ``torch.mm``
    (``kernels.matmul``)."""
    import torch

    from .kernels.matmul import cpu_matmul_path

    path = cpu_matmul_path()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    best = {"ops_per_s": 0.0}
    for m, k, n in _PEAK_SHAPES:
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
        b = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=g)
        out = torch.empty((m, n), dtype=torch.int32)
        if path == "int32":
            a, b = a.to(torch.int32), b.to(torch.int32)
            product = lambda: torch.mm(a, b, out=out)  # noqa: E731
        elif path == "avx2":
            from .kernels import cpu_gemm

            product = lambda: cpu_gemm.gemm(a, b, out)  # noqa: E731
        else:
            product = lambda: torch._int_mm(a, b, out=out)  # noqa: E731
        product()
        t = min(_timed(product) for _ in range(repeats))
        ops = 2 * m * k * n / t
        if ops > best["ops_per_s"]:
            best = {"ops_per_s": ops, "shape_mkn": [m, k, n], "seconds": t, "product": path}
    return best


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------- integer worker


def _profile_step(model, images, labels) -> dict:  # noqa: ANN001 - an IntegerModel
    """One profiled ``train_step``: seconds per layer and phase, split into ``_int_mm`` and the rest.

    Layers' ``forward``/``backward``, the runtime's ``rescale``, the loss, the
    update and the input conversion are wrapped in ``record_function`` ranges
    for this one step only (instance/module attributes, restored afterwards).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from . import nn as inn
    from .models import integer as integer_mod

    def wrap(fn, name):  # noqa: ANN001, ANN202
        def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            with record_function(name):
                return fn(*args, **kwargs)
        return wrapped

    patches: list[tuple[object, str, object, bool]] = []

    def patch(obj: object, attr: str, name: str) -> None:
        if hasattr(obj, attr):
            in_dict = attr in vars(obj)
            patches.append((obj, attr, vars(obj).get(attr), in_dict))
            setattr(obj, attr, wrap(getattr(obj, attr), name))

    layers = list(model.net.layers)
    for i, layer in enumerate(layers):
        patch(layer, "forward", f"niti/{i}:{type(layer).__name__}/forward")
        patch(layer, "backward", f"niti/{i}:{type(layer).__name__}/backward")
    patch(model.runtime, "rescale", "niti-part/rescale")
    from .kernels import cpu_gemm
    from .kernels.matmul import cpu_matmul_path

    gemm_ops: list[int] = []  # niti's AVX2 kernel is a ctypes call the profiler cannot see: count it here
    if cpu_matmul_path() == "avx2":
        original_gemm = cpu_gemm.gemm

        def counted_gemm(a, b, out=None):  # noqa: ANN001, ANN202
            gemm_ops.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
            return original_gemm(a, b, out)
        patches.append((cpu_gemm, "gemm", original_gemm, True))
        cpu_gemm.gemm = wrap(counted_gemm, "niti::int8_gemm")
    patch(inn, "cross_entropy_backward", "niti/loss")
    patch(integer_mod, "apply_update", "niti/update")
    patch(inn, "images_to_int8", "niti/input")
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            with record_function("niti/step"):
                model.train_step(images, labels)
    finally:
        for obj, attr, old, in_dict in reversed(patches):
            if in_dict:
                setattr(obj, attr, old)
            else:
                delattr(obj, attr)

    events = [e for e in prof.events() if e.device_type.name == "CPU"]

    def us(e) -> float:  # noqa: ANN001
        return e.time_range.end - e.time_range.start

    def inside(e, outer) -> bool:  # noqa: ANN001
        return e.time_range.start >= outer.time_range.start and e.time_range.end <= outer.time_range.end \
            and e.thread == outer.thread

    product = {"int32": "aten::mm", "avx2": "niti::int8_gemm"}.get(cpu_matmul_path(), "aten::_int_mm")
    mms = [e for e in events if e.name == product]  # the integer products of the step
    ops = sum(gemm_ops)
    for e in mms:
        shapes = e.input_shapes
        if shapes and len(shapes) >= 2 and len(shapes[0]) == 2 and len(shapes[1]) == 2:
            ops += 2 * shapes[0][0] * shapes[0][1] * shapes[1][1]
    step = next(e for e in events if e.name == "niti/step")
    ranges = [e for e in events if e.name.startswith("niti/") and e.name != "niti/step"]
    rescales = [e for e in events if e.name == "niti-part/rescale"]
    rows: dict[str, dict] = {}
    for r in ranges:
        row = rows.setdefault(r.name[5:], {"seconds": 0.0, "int_mm_seconds": 0.0, "rescale_seconds": 0.0})
        row["seconds"] += us(r) / 1e6
        row["int_mm_seconds"] += sum(us(m) for m in mms if inside(m, r)) / 1e6
        row["rescale_seconds"] += sum(us(s) for s in rescales if inside(s, r)) / 1e6
    for row in rows.values():
        row["other_seconds"] = row["seconds"] - row["int_mm_seconds"]
    total = us(step) / 1e6
    int_mm = sum(us(m) for m in mms) / 1e6

    def kind_sum(pred) -> float:  # noqa: ANN001
        return sum(v["other_seconds"] for k, v in rows.items() if pred(k))

    categories = {
        "int_mm": int_mm,
        "rescale": sum(v["rescale_seconds"] for v in rows.values()),
        "conv_linear_data_movement": kind_sum(lambda k: ":Conv2d/" in k or ":Linear/" in k)
        - sum(v["rescale_seconds"] for k, v in rows.items() if ":Conv2d/" in k or ":Linear/" in k),
        "relu": kind_sum(lambda k: ":ReLU/" in k),
        "pool": kind_sum(lambda k: ":MaxPool2d/" in k or ":AvgPool2d/" in k),
        "add": kind_sum(lambda k: ":Add/" in k),
        "norm": kind_sum(lambda k: ":BatchNorm2d/" in k)
        - sum(v["rescale_seconds"] for k, v in rows.items() if ":BatchNorm2d/" in k),
        "flatten_dropout": kind_sum(lambda k: ":Flatten/" in k or ":Dropout/" in k),
        "loss": kind_sum(lambda k: k == "loss"),
        "update": kind_sum(lambda k: k == "update"),
        "input": kind_sum(lambda k: k == "input") - rows.get("input", {}).get("rescale_seconds", 0.0),
    }
    categories["unattributed"] = total - sum(categories.values())
    return {"profiled_step_seconds": total, "int_mm_seconds": int_mm, "int_mm_fraction": int_mm / total,
            "int_mm_calls": len(mms), "int8_ops_per_step": ops, "categories_seconds": categories,
            "layers": [{"name": k, **v} for k, v in rows.items()]}


def _integer_worker(req: dict) -> dict:
    import torch

    torch.set_num_threads(req["threads"])
    from . import _float_twin as mem  # noqa: PLC0415 - its memory helpers import torch only
    from .kernels import fused
    from .models import build

    name, bs = req["model"], req["batch_size"]
    shape = tuple(req["input_shape"]) if req.get("input_shape") else None
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple:
        h, w, c = build_arch.input_shape
        return (torch.randint(0, 256, (n, h, w, c), dtype=torch.uint8, generator=gen),
                torch.randint(0, build_arch.num_classes, (n,), generator=gen))

    build_arch = build(name, input_shape=shape).arch
    # Compile the fused chains (shape-generic) before the memory baseline.
    warm = build(name, input_shape=shape)
    for _ in range(2):
        warm.train_step(*batch(2))
    del warm
    images, labels = batch(bs)
    rss0 = mem.settled_rss_bytes()
    model = build(name, input_shape=shape)
    for _ in range(req["warmup"]):
        model.train_step(images, labels)
    reset_ok = mem.reset_peak_rss()
    times, cpu = [], []
    for _ in range(req["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        model.train_step(images, labels)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = mem.peak_rss_bytes() - rss0
    profile = req.get("profile", True)  # later rounds time the step only
    breakdown = _profile_step(model, images, labels) if profile else None
    peak_ops = int8_peak(req["threads"]) if profile else None
    broken = {n: f.broken for n, f in vars(fused).items() if isinstance(f, fused.Fused) and f.broken}
    return {"step_s": statistics.median(times), "step_times_s": times, "step_cpu_s": statistics.median(cpu),
            "peak_bytes": peak,
            "peak_method": "VmHWM-reset" if reset_ok else "VmHWM", "threads": torch.get_num_threads(),
            "compiled": fused.compile_enabled(), "fused_fallbacks": broken, "breakdown": breakdown,
            "int8_peak": peak_ops, "torch": torch.__version__,
            "workspace_bytes": model.runtime.workspace.nbytes(), "kernel_paths": kernel_paths()}


def kernel_paths() -> dict[str, str]:
    """Which implementation each CPU kernel family uses in this process: the int8 product (``int_mm``, ``avx2``
    or ``int32``) and the C loops of batch norm, max pooling, the rescale's rounding, im2col and the other chains
    (ReLU backward, col2im, the SGD update) (``C``, or ``PyTorch`` where they could not be built, then compiled
    chains): a slow run names its cause."""
    import torch

    from .kernels import cpu_bn, cpu_chains, cpu_im2col, cpu_round, pool
    from .kernels.matmul import cpu_matmul_path

    cpu = torch.zeros(1, dtype=torch.int8)

    def path(built: bool) -> str:
        return "C" if built else "PyTorch"

    return {"int8 product": cpu_matmul_path(), "batch norm": path(cpu_bn.available(cpu)),
            "max pool": path(pool._c_pool(3, cpu) is not None),
            "rounding": path(cpu_round.applies(cpu.to(torch.int32), 1, "nearest", 7, torch.int8)),
            "im2col": path(cpu_im2col.applies(cpu, (0, 0))), "chains": path(cpu_chains.available(cpu))}


def _integer_worker_main() -> None:
    print("NITI_BENCH_RESULT " + json.dumps(_integer_worker(json.loads(sys.argv[1]))))


# -------------------------------------------------------------- orchestration


def _run_worker(cmd: list[str], timeout: float, omp_wait_policy: str | None, heap: str = "release") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    env.update(heap_child_env(heap))
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy.upper()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("NITI_BENCH_RESULT "):
            return json.loads(line[len("NITI_BENCH_RESULT "):])
        if line.startswith("{"):
            return json.loads(line)
    return {"error": f"worker exited with status {proc.returncode}: {proc.stderr.strip()[-2000:]}"}


def _float_spec(model_name: str, input_shape: tuple[int, int, int] | None = None) -> dict:
    """How the float worker re-creates the very module the integer model converts (validates the name)."""
    from .models import zoo
    from .models.architectures import get_architecture, is_factory_path

    arch = get_architecture(model_name, input_shape)
    spec = {"input_shape": list(arch.input_shape), "num_classes": arch.num_classes}
    if is_factory_path(model_name):
        return {**spec, "factory_path": model_name, "cwd": os.getcwd()}
    return {**spec, "zoo_file": str(Path(zoo.__file__).resolve()), "factory": arch.factory.__name__}


def run_bench(model_name: str, batch_size: int, threads: int = 2, steps: int = 10, warmup: int = 3, *,
              bf16: str = "auto", omp_wait_policy: str | None = None, timeout: float = 3600.0,
              input_shape: tuple[int, int, int] | None = None, rounds: int = 1, heap: str = "release") -> dict:
    """Median steady-state training-step time, memory and breakdown: integer vs fp32 (and bf16) PyTorch.

    ``bf16``: "auto" runs bf16 autocast only where the CPU has native bf16,
    "always" runs it anyway (emulated: slow), "never" skips it.
    ``rounds`` > 1 repeats the fresh-process measurements in turn (integer, fp32, bf16, integer, ...): on a
    machine whose speed drifts (a shared host), every side then sees the same stretches of time.  Each side's
    step time is the median of its rounds' medians, and the paired per-round speed-ups are kept
    (``summary["speedup_vs_fp32_rounds"]``); memory is the rounds' median, the profile the first round's.
    ``omp_wait_policy`` ("active"/"passive") is set as ``OMP_WAIT_POLICY`` for
    every worker alike.  On a machine busy with other work, "passive" keeps
    waiting OpenMP threads from spinning on the cores the working ones need:
    measured on 2 busy cores, LeNet's integer step took 530 ms spinning and
    69 ms passive (fp32: 233 and 102 ms).  On an idle machine leave it unset.
    ``heap`` is glibc's policy for freed memory in every worker alike (``niti/heap.py``): "release", glibc's
    defaults (the default here, as PyTorch runs unless told otherwise), or "keep", what ``niti train`` sets
    for itself.  Both sides speed up with "keep" (they allocate and free the same tensors every step), so the
    speed-ups compare arithmetic only when both run under one policy.
    """
    if batch_size < 1 or threads < 1 or steps < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"batch_size, threads, steps and rounds must be >= 1 and warmup >= 0, got batch_size="
                         f"{batch_size}, threads={threads}, steps={steps}, rounds={rounds}, warmup={warmup}")
    if bf16 not in ("auto", "always", "never"):
        raise ValueError(f"bf16 must be 'auto', 'always' or 'never', got {bf16!r}")
    if omp_wait_policy not in (None, "active", "passive"):
        raise ValueError(f"omp_wait_policy must be None, 'active' or 'passive', got {omp_wait_policy!r}")
    policy = omp_wait_policy or os.environ.get("OMP_WAIT_POLICY") or None
    heap_child_env(heap)  # validates
    spec = _float_spec(model_name, input_shape)  # validates the name
    req = {"model": model_name, "batch_size": batch_size, "threads": threads, "steps": steps, "warmup": warmup,
           "input_shape": list(input_shape) if input_shape else None}
    load_before = os.getloadavg()
    started = _dt.datetime.now(_dt.timezone.utc)
    runs: dict[str, list[dict]] = {"integer": [], "fp32": [], "bf16": []}
    skipped_bf16 = None
    if bf16 == "never" or (bf16 == "auto" and not native_bf16()):
        skipped_bf16 = {"skipped": "no native bf16 on this CPU (avx512_bf16/amx_bf16 absent); autocast would "
                                   "emulate it" if bf16 == "auto" else "--bf16 never"}
    for k in range(rounds):
        runs["integer"].append(_run_worker([sys.executable, "-c", "from niti.bench import _integer_worker_main as m; "
                                            "m()", json.dumps({**req, "profile": k == 0})], timeout, omp_wait_policy, heap))
        for precision in ("fp32",) if skipped_bf16 else ("fp32", "bf16"):
            freq = {**req, "spec": spec, "precision": precision}
            # -P: do not put niti/ (the script's folder) on sys.path; the twin imports torch only.
            runs[precision].append(_run_worker([sys.executable, "-P", str(_FLOAT_TWIN), json.dumps(freq)], timeout,
                                               omp_wait_policy, heap))
    result = {
        "model": model_name, "batch_size": batch_size, "threads": threads, "steps": steps, "warmup": warmup,
        "rounds": rounds, "date": started.isoformat(timespec="seconds"), "machine": machine_info(),
        "omp_wait_policy": policy, "heap": heap, "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "integer": _over_rounds(runs["integer"]), "fp32": _over_rounds(runs["fp32"]),
        "bf16": skipped_bf16 or _over_rounds(runs["bf16"]),
    }
    result["summary"] = _summary(result)
    if rounds > 1 and all("step_s" in r for side in ("integer", "fp32") for r in runs[side]):
        for key in ("fp32", "bf16"):
            if runs[key] and all("step_s" in r for r in runs[key]):
                result["summary"][f"speedup_vs_{key}_rounds"] = [f["step_s"] / i["step_s"]
                                                                 for i, f in zip(runs["integer"], runs[key])]
    return result


def _over_rounds(rounds: list[dict]) -> dict:
    """One side's result over its rounds: the first round's (its profile), with the step time, CPU time and peak
    memory the rounds' medians and each round's step time kept (``round_step_s``); an error stays an error."""
    first = dict(rounds[0])
    if any("step_s" not in r for r in rounds):
        return first if "step_s" not in first else next(r for r in rounds if "step_s" not in r)
    if len(rounds) > 1:
        first["round_step_s"] = [r["step_s"] for r in rounds]
        for key in ("step_s", "step_cpu_s", "peak_bytes"):
            first[key] = statistics.median(r[key] for r in rounds)
    return first


def _summary(r: dict) -> dict:
    """Images/s, speed-ups, memory ratio and int8 efficiency from the raw worker results."""
    out: dict = {}
    bs = r["batch_size"]
    for key in ("integer", "fp32", "bf16"):
        step = r[key].get("step_s") if isinstance(r[key], dict) else None
        out[f"{key}_images_per_s"] = bs / step if step else None
    integer = r["integer"]
    if "step_s" not in integer:
        return out
    for key in ("fp32", "bf16"):
        if "step_s" in r[key]:
            out[f"speedup_vs_{key}"] = r[key]["step_s"] / integer["step_s"]
            # CPU time is less disturbed by other processes than wall time (it includes spin-waiting).
            out[f"cpu_time_ratio_{key}_over_integer"] = r[key]["step_cpu_s"] / integer["step_cpu_s"]
    if "peak_bytes" in r["fp32"]:
        out["memory_integer_over_fp32"] = integer["peak_bytes"] / r["fp32"]["peak_bytes"]
    bd, peak = integer["breakdown"], integer["int8_peak"]["ops_per_s"]
    achieved = bd["int8_ops_per_step"] / bd["int_mm_seconds"] if bd["int_mm_seconds"] else 0.0
    out["int8_peak_ops_per_s"] = peak
    out["int_mm_achieved_ops_per_s"] = achieved
    out["int_mm_fraction_of_peak"] = achieved / peak if peak else None
    out["int_mm_fraction_of_step"] = bd["int_mm_fraction"]
    out["other_fraction_of_step"] = 1.0 - bd["int_mm_fraction"]
    out["step_int8_ops_per_s"] = bd["int8_ops_per_step"] / integer["step_s"]
    return out


# ---------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="lenet",
                        help="a built-in model (lenet, vgg-small-7, ...) or MODULE:FACTORY (then give --input-shape)")
    parser.add_argument("--input-shape", default=None, metavar="H,W,C", type=_input_shape,
                        help="image shape of a MODULE:FACTORY model, e.g. 32,32,3")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every measurement")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the measurements in turn this many times (medians; for a drifting machine)")
    parser.add_argument("--bf16", choices=("auto", "always", "never"), default="auto",
                        help="bf16 autocast baseline: auto = only with native bf16 on this CPU")
    parser.add_argument("--omp-wait-policy", choices=("active", "passive"), default=None,
                        help="OMP_WAIT_POLICY for every measurement; 'passive' on a machine busy with other work")
    parser.add_argument("--heap", choices=("release", "keep"), default="release",
                        help="glibc's policy for freed memory in every measurement: release (glibc's defaults, as "
                             "PyTorch runs) or keep (what niti train sets for itself; niti/heap.py)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"--input-shape must be three positive integers H,W,C, got {text!r}")
    return shape  # type: ignore[return-value]


def _fmt_row(name: str, d: dict, bs: int) -> str:
    if "step_s" not in d:
        return f"  {name:8s} {d.get('skipped') or d.get('error')}"
    return (f"  {name:8s} {d['step_s'] * 1e3:10.1f} ms/step  {bs / d['step_s']:9.1f} img/s  "
            f"peak {d['peak_bytes'] / 2**20:8.1f} MiB  (process CPU {d['step_cpu_s'] * 1e3:.1f} ms/step)")


def format_report(r: dict) -> str:
    s, bs = r["summary"], r["batch_size"]
    policy = f", OMP_WAIT_POLICY={r['omp_wait_policy']}" if r.get("omp_wait_policy") else ""
    policy += f", heap {r['heap']} (both sides)" if r.get("heap", "release") != "release" else ""
    rounds = r.get("rounds", 1)
    median = (f"median over {rounds} interleaved rounds of the median of {r['steps']} steps" if rounds > 1
              else f"median of {r['steps']} steps")
    lines = [f"niti bench: {r['model']} batch {bs}, {r['threads']} threads{policy}, {median} "
             f"({r['machine']['cpu']}; load {r['load_average_before'][0]:.2f} -> {r['load_average_after'][0]:.2f})"]
    for key in ("integer", "fp32", "bf16"):
        lines.append(_fmt_row(key, r[key], bs))
    for key in ("fp32", "bf16"):
        if f"speedup_vs_{key}" in s:
            per_round = s.get(f"speedup_vs_{key}_rounds")
            paired = f" (rounds: {', '.join(f'{v:.2f}' for v in per_round)})" if per_round else ""
            lines.append(f"  integer is {s[f'speedup_vs_{key}']:.2f}x {key}{paired}")
    if "memory_integer_over_fp32" in s:
        lines.append(f"  integer peak memory = {s['memory_integer_over_fp32']:.2f} x fp32")
    if "int8_peak_ops_per_s" in s:
        lines.append(f"  int8 peak (_int_mm micro-benchmark) {s['int8_peak_ops_per_s'] / 1e9:.1f} GOPS; products ran at "
                     f"{s['int_mm_achieved_ops_per_s'] / 1e9:.1f} GOPS ({s['int_mm_fraction_of_peak']:.0%} of peak), "
                     f"{s['int_mm_fraction_of_step']:.0%} of the step")
        if "kernel_paths" in r["integer"]:
            lines.append("  kernels: " + ", ".join(f"{k} {v}" for k, v in r["integer"]["kernel_paths"].items()))
        bd = r["integer"]["breakdown"]
        lines.append("  profiled step, seconds: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                          bd["categories_seconds"].items()))
        for row in bd["layers"]:
            lines.append(f"    {row['name']:28s} {row['seconds'] * 1e3:9.2f} ms  int_mm {row['int_mm_seconds'] * 1e3:9.2f}"
                         f"  rescale {row['rescale_seconds'] * 1e3:8.2f}  other {row['other_seconds'] * 1e3:8.2f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    result = run_bench(args.model, args.batch_size, args.threads, args.steps, args.warmup, bf16=args.bf16,
                       omp_wait_policy=args.omp_wait_policy, input_shape=args.input_shape, rounds=args.rounds,
                       heap=args.heap)
    print(json.dumps(result) if args.json else format_report(result))
    return 0 if "step_s" in result["integer"] else 1


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(prog="python -m niti.bench")
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
