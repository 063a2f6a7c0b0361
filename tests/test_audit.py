"""``niti.audit.integer_only`` (docs/numerics.md §11): it must see every aten op and fail on floating point."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import niti
from niti.audit import FloatingPointOpError, integer_only

X = torch.arange(6, dtype=torch.int32)
FLOAT_OUTSIDE = torch.ones(3)

FLOAT_CASES = {
    "factory default dtype": lambda: torch.zeros(2),
    "float literal": lambda: torch.tensor([1.5]),
    "cast .float()": lambda: X.float(),
    "cast to bfloat16": lambda: X.to(torch.bfloat16),
    "true division": lambda: X / 2,
    "float scalar multiply": lambda: X * 0.5,
    "float scalar add": lambda: X + 1.5,
    "clamp with float bounds": lambda: X.clamp(0.5, 3.5),
    "sum into float64": lambda: X.sum(dtype=torch.float64),
    "complex factory": lambda: torch.zeros(2, dtype=torch.complex64),
    "random floats": lambda: torch.rand(3).to(torch.int32),
    "log2 (the reference's range estimate)": lambda: torch.log2(X),
    "sqrt": lambda: torch.sqrt(X),
    "float tensor from outside": lambda: FLOAT_OUTSIDE + 1,
    "empty_like float16": lambda: torch.empty_like(X, dtype=torch.float16),
}


@pytest.mark.parametrize("name", list(FLOAT_CASES))
def test_float_ops_raise(name: str) -> None:
    with pytest.raises(FloatingPointOpError, match=r"aten\.\w+.*integer_only"):
        with integer_only():
            FLOAT_CASES[name]()


def test_integer_ops_pass_and_are_counted() -> None:
    with integer_only() as audit:
        a = torch.randint(-127, 128, (32, 32), dtype=torch.int8)
        b = torch._int_mm(a, a.t().contiguous())
        c = torch.div(b, 3, rounding_mode="trunc") >> 2
        d = torch.where(c > 0, c, torch.zeros((), dtype=c.dtype)).sum()
        e = X // 2
    assert audit.ops >= 6
    assert d.dtype == torch.int64 and e.dtype == torch.int32


def test_error_is_a_runtime_error_naming_the_dtype() -> None:
    assert issubclass(FloatingPointOpError, RuntimeError)
    with pytest.raises(FloatingPointOpError, match="float32"):
        with integer_only():
            X.float()


def test_mode_is_left_after_an_error() -> None:
    with pytest.raises(FloatingPointOpError):
        with integer_only():
            torch.zeros(2)
    assert float(torch.ones(2).sum()) == 2.0  # floats work again outside


def test_nested_counting_is_per_context() -> None:
    with integer_only() as outer:
        X + 1
        with integer_only() as inner:
            X + 2
    assert inner.ops >= 1 and outer.ops >= 1


def test_python_float_scalars_are_refused_by_default() -> None:
    """A float converted to integers creates no float *tensor*; the default audit still refuses it."""
    for planted in (lambda: torch.full((2,), 2.7, dtype=torch.int32), lambda: X.clone().fill_(3.9)):
        with integer_only(allow_float_scalars=True):
            planted()  # the weaker, tensor-only check passes it
        with pytest.raises(FloatingPointOpError, match="Python float"):
            with integer_only():
                planted()


def _sample(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 28, 28, 1), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


def test_a_planted_python_float_inside_a_step_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from niti.nn.layers import ReLU

    real = ReLU.forward

    def scaled(self: ReLU, x, ctx=None):  # noqa: ANN001, ANN202 - a "scale by 1.7" that silently truncates to 1
        return real(self, x.with_m(x.m * torch.full(x.m.shape, 1.7, dtype=x.m.dtype)), ctx)

    monkeypatch.setattr(ReLU, "forward", scaled)
    model = niti.build("lenet", seed=0)
    with pytest.raises(FloatingPointOpError, match="aten.full.*Python float"):
        with integer_only():
            model.train_step(*_sample())


@pytest.mark.parametrize("accumulator_bits", [8, 16])
def test_lenet_step_passes_the_default_audit(accumulator_bits: int) -> None:
    """No float tensor and not even a float scalar anywhere in a LeNet training step and prediction."""
    model = niti.build("lenet", seed=0, accumulator_bits=accumulator_bits)
    images, labels = _sample()
    with integer_only() as audit:
        model.train_step(images, labels)
        pred = model.predict(images)
    assert audit.ops > 100 and model.step == 1
    assert pred.dtype == torch.int64


# --- static scan of the integer modules ------------------------------------------------------------

#: The modules of the training step: every line they run on tensor data must be integer code.
INTEGER_MODULES = ("niti/numerics.py", "niti/runtime.py", "niti/counter_bits.py", "niti/optim.py",
                   "niti/models/integer.py", "niti/nn", "niti/kernels")
#: math functions that are exact integer functions.
INTEGER_MATH = {"isqrt", "prod", "gcd", "lcm", "comb", "perm", "factorial"}
#: Config-side lines allowed to hold a float, with the reason. Keyed by text, not line number, so edits elsewhere
#: in a file do not break it.
ALLOWED = {
    ("niti/optim.py", "boundaries: tuple[float, ...] = (0.5, 0.75)"): "gb schedule config: fractions of training",
    ("niti/optim.py", "float(b) for b in bounds"): "parses the --gb-schedule string (config, not tensor data)",
    ("niti/models/integer.py", "import numpy as np"): "weights_sha256 hashes the tensors' bytes",
}
_FLOAT_NAMES = {"float", "double", "half", "bfloat16", "float16", "float32", "float64", "cfloat", "complex64",
                "complex128"}


def _findings(node: ast.AST) -> str | None:
    """Why ``node`` is float code, or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (float, complex)):
        return "float literal"
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.Div):
        return "true division /"
    if isinstance(node, ast.Import):
        bad = [a.name for a in node.names if a.name.split(".")[0] in ("math", "numpy", "statistics", "decimal")]
        return f"import {', '.join(bad)}" if bad else None
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("math", "numpy", "statistics"):
        bad = [a.name for a in node.names if node.module != "math" or a.name not in INTEGER_MATH]
        return f"from {node.module} import {', '.join(bad)}" if bad else None
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math" \
            and node.attr not in INTEGER_MATH:
        return f"math.{node.attr}"
    if isinstance(node, ast.Attribute) and node.attr in _FLOAT_NAMES:
        return f".{node.attr}"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("float", "complex"):
        return f"{node.func.id}()"
    return None


def _scan(root: Path, rel: str) -> list[str]:
    source = (root / rel).read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        why = _findings(node)
        if why is None:
            continue
        line = lines[node.lineno - 1].strip()
        if not any(f == rel and text in line for f, text in ALLOWED):
            found.append(f"{rel}:{node.lineno}: {why}: {line}")
    return found


def _integer_module_files(root: Path) -> list[str]:
    files = []
    for entry in INTEGER_MODULES:
        path = root / entry
        files += [str(p.relative_to(root)) for p in sorted(path.glob("*.py"))] if path.is_dir() else [entry]
    return files


def test_integer_modules_hold_no_float_code() -> None:
    """Float literals, true division, math/numpy and float dtypes in the step's modules, beyond an explicit
    allow-list of config-side lines: what the dispatch audit cannot see (Python-side float arithmetic)."""
    root = Path(niti.__file__).resolve().parents[1]
    files = _integer_module_files(root)
    assert "niti/kernels/fused.py" in files and "niti/nn/loss.py" in files
    found = [f for rel in files for f in _scan(root, rel)]
    assert not found, "float code in integer modules:\n" + "\n".join(found)


def test_the_static_scan_catches_planted_float_code(tmp_path: Path) -> None:
    planted = {"a.py": "y = x * 0.5\n", "b.py": "s = t.sum() / n\n", "c.py": "import math\ne = math.log2(v)\n",
               "d.py": "import numpy as np\n", "e.py": "z = t.float()\n", "f.py": "from math import log2\n",
               "g.py": "k = float(v)\n"}
    for name, code in planted.items():
        (tmp_path / name).write_text(code)
        assert _scan(tmp_path, name), name
    (tmp_path / "ok.py").write_text("from math import isqrt\nshift = e // 2 + isqrt(n) - (1 << k)\n")
    assert _scan(tmp_path, "ok.py") == []


#: C's floating-point types and intrinsics (``__m256``, ``_mm256_add_ps``), float literals (``1.5``, ``2e3``, ``0x1p4``)
#: and ``<math.h>``: none may appear in the
#: C loops of the step (``niti/kernels/csrc``), which the dispatch audit cannot see into.
_C_FLOAT = re.compile(r"\b(float|double|_Float\d+|__m\d+[dh]?|math\.h|_mm\d*_\w+_p[sdh])\b"
                      r"|\b\d+\.\d*|\b\d+[eE][+-]?\d+\b|\b0x[\da-fA-F]*p")


def _c_code(text: str) -> str:
    """A C source without its comments and string literals."""
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\])*"', " ", text, flags=re.S)


def test_c_loops_hold_no_float_code() -> None:
    """The step's C loops use integer types and instructions only: no float, double, float vector type
    (``__m256``, ``__m256d``), float literal or <math.h> outside comments."""
    csrc = Path(niti.__file__).resolve().parent / "kernels" / "csrc"
    sources = sorted(csrc.glob("*.[ch]"))
    assert len(sources) >= 8
    found = [f"{p.name}:{i}: {line.strip()}" for p in sources
             for i, line in enumerate(_c_code(p.read_text()).splitlines(), 1) if _C_FLOAT.search(line)]
    assert not found, "float code in the C loops:\n" + "\n".join(found)
    for planted in ("double x = 0;", "float y;", "__m256 v;", "s = 1.5 * t;", "q = 2e3;", "#include <math.h>",
                    "v = _mm256_cvtepi32_ps(a);"):
        assert _C_FLOAT.search(_c_code(planted)), planted
    assert not _C_FLOAT.search(_c_code("/* a float in a comment */ int64_t q = a >> 3; __m256i v;"))
