"""Float PyTorch training-step timing for ``niti bench``, run as a script that imports torch only.

``niti.bench`` starts this file in a fresh interpreter (``python _float_twin.py
'<json>'``) so that nothing niti does to its own process (thread settings,
compiled kernels, allocator state) touches the baseline.  It imports torch
only, builds the very torch module the integer model converts (the zoo
factory, loaded from ``niti/models/zoo.py`` by path, or the user's
``MODULE:FACTORY``) and trains it in fp32 (or bf16 autocast), channels_last,
with PyTorch's default oneDNN kernels, autograd and SGD with momentum, and
prints one JSON line with the median step time and the peak resident memory
of training (``niti.bench`` reuses its /proc memory helpers).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def settled_rss_bytes() -> int:
    """RSS after collecting garbage and returning freed heap pages to the kernel: a baseline that later
    frees cannot undercut (otherwise a small model's peak can read below a baseline that still held
    the warm-up's freed memory)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_bytes()


def peak_rss_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def build(spec: dict) -> torch.nn.Module:
    """The module the integer model converts: a zoo factory loaded from its file, or the user's MODULE:FACTORY."""
    import importlib
    import importlib.util

    if "zoo_file" in spec:
        # Load niti/models/zoo.py by path: it imports torch only, and the niti package stays unimported.
        loader = importlib.util.spec_from_file_location("niti_zoo", spec["zoo_file"])
        zoo = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(zoo)
        return getattr(zoo, spec["factory"])()
    module_name, _, attr = spec["factory_path"].partition(":")
    sys.path.insert(0, spec["cwd"])
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj()


def run(spec: dict, batch_size: int, threads: int, steps: int, warmup: int, precision: str) -> dict:
    """Median step time (s) and training memory of the float model; ``precision`` "fp32" or "bf16"."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    h, w, c = spec["input_shape"]
    x = torch.randn(batch_size, c, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec["num_classes"], (batch_size,))
    rss0 = settled_rss_bytes()
    model = build(spec).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
        else:
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    reset_ok = reset_peak_rss()
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"precision": precision, "step_s": statistics.median(times), "step_times_s": times,
            "step_cpu_s": statistics.median(cpu),
            "peak_bytes": peak_rss_bytes() - rss0, "peak_method": "VmHWM-reset" if reset_ok else "VmHWM",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "niti_imported": any(m == "niti" or m.startswith("niti.") for m in sys.modules)}


def main() -> None:
    req = json.loads(sys.argv[1])
    precision = req["precision"]
    if precision == "bf16" and not torch.backends.mkldnn.is_available():
        print(json.dumps({"precision": precision, "error": "oneDNN (mkldnn) unavailable: no CPU bf16 path"}))
        return
    try:
        out = run(req["spec"], req["batch_size"], req["threads"], req["steps"], req["warmup"], precision)
    except RuntimeError as exc:  # e.g. bf16 autocast unsupported on this CPU build
        out = {"precision": precision, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
