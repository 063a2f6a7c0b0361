"""Float PyTorch training-step timing for ``niti bench``, run as a script that imports torch only.

``niti.bench`` starts this file in a fresh interpreter (``python _float_twin.py
'<json>'``) so that nothing niti does to its own process (thread settings,
compiled kernels, allocator state) touches the baseline.  It imports torch
only, builds the architecture spec it is given the way a user writes it
(``nn.Conv2d`` without bias, ``nn.ReLU``, ``nn.MaxPool2d``, ``nn.Dropout``,
``nn.Linear``; fp32, channels_last, PyTorch's default oneDNN kernels, autograd,
SGD with momentum) and prints one JSON line with the median step time and
the peak resident memory of training (``niti.bench`` reuses its /proc memory helpers).
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


def peak_rss_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def build(spec: dict) -> torch.nn.Sequential:
    h, w, c = spec["input_shape"]
    layers: list[torch.nn.Module] = []
    features = 0
    for layer in spec["layers"]:
        kind = layer[0]
        if kind == "conv":
            _, oc, k, p = layer
            layers.append(torch.nn.Conv2d(c, oc, k, padding=p, bias=False))
            h, w, c = h + 2 * p - k + 1, w + 2 * p - k + 1, oc
        elif kind == "relu":
            layers.append(torch.nn.ReLU())
        elif kind == "pool":
            layers.append(torch.nn.MaxPool2d(layer[1]))
            h, w = h // layer[1], w // layer[1]
        elif kind == "flatten":
            layers.append(torch.nn.Flatten())
            features = h * w * c
        elif kind == "dropout":
            layers.append(torch.nn.Dropout(0.5))
        elif kind == "linear":
            layers.append(torch.nn.Linear(features, layer[1], bias=False))
            features = layer[1]
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    return torch.nn.Sequential(*layers)


def run(spec: dict, batch_size: int, threads: int, steps: int, warmup: int, precision: str) -> dict:
    """Median step time (s) and training memory of the float model; ``precision`` "fp32" or "bf16"."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    h, w, c = spec["input_shape"]
    x = torch.randn(batch_size, c, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec["num_classes"], (batch_size,))
    rss0 = rss_bytes()
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
