"""Check a second implementation of the integer forward pass against a niti step trace (golden vectors).

The second implementation here is the numpy runner that ``niti export`` writes
(``infer.py``): its per-layer functions are driven with the shifts the trace
recorded (training uses each batch's shift) and every layer's output is
compared with the trace, bit for bit.  An RTL or C implementation is checked
the same way: feed it ``batch.images`` and the recorded shifts, compare its
layer outputs with ``<layer>.out``.

    niti export RUN -o EXPORT && niti trace RUN -o TRACE.npz
    python examples/verify_forward_with_trace.py EXPORT TRACE.npz

Needs numpy only.  Dropout is not modelled (evaluation treats it as the
identity, training does not), so a model with dropout fails at that layer.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np


def main(export_dir: str, trace_path: str) -> int:
    spec = importlib.util.spec_from_file_location("infer", Path(export_dir) / "infer.py")
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    model = infer.load(str(Path(export_dir) / "model.npz"))
    graph, arrays = model["graph"], model["arrays"]
    with np.load(trace_path, allow_pickle=False) as f:
        trace = {k: f[k] for k in f.files}
    config = json.loads(str(trace["__format__"]))["config"]
    if config["act_round"] not in ("nearest", "pseudo_stochastic", "truncate"):
        print(f"activations round {config['act_round']!r}: the runner draws no noise; not comparable")
        return 2
    mode = config["act_round"]

    def recorded(name: str) -> np.ndarray:
        if name not in trace:
            raise SystemExit(f"trace has no {name!r}")
        return trace[name]

    for key in arrays:  # the export and the trace must describe the same weights
        if not np.array_equal(arrays[key], recorded(key + ".before.m")):
            print(f"MISMATCH {key}: the export's weights are not the trace's starting weights")
            return 1
    checked = 0

    def compare(name: str, m: np.ndarray, e: int) -> bool:
        nonlocal checked
        ok = np.array_equal(m, recorded(name + ".out").astype(np.int64)) and e == int(recorded(name + ".out.e"))
        checked += 1
        if not ok:
            print(f"MISMATCH {name}.out")
        return ok

    shift = int(recorded("input.activation.shift"))
    values = [infer.convert_input(recorded("batch.images"), graph["input"], mode, shift)]
    if not compare("input", *values[0]):
        return 1
    for node in graph["nodes"]:
        name = node["name"]
        # The trace's (training-time, whole-batch) shift where the layer rescales; the runner's code throughout.
        shift = int(recorded(name + ".activation.shift")) if "shift" in node else None
        out = infer.apply_node(node, [values[i] for i in node["inputs"]], arrays, mode, shift)
        values.append(out)
        if not compare(name, *out):
            return 1
    print(f"all {checked} layer outputs of the numpy forward match the trace")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
