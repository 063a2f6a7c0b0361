"""``niti.heap``: freed blocks stay in the heap (no page faults on reuse), the opt-out, and the bench's policy."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from niti import bench, heap

# Allocates and frees a 64 MiB tensor 9 times, touching every page, and prints the minor page faults of each of the
# last 7 (glibc settles its heap over the first allocations, not always by the same one).
_FAULTS = """
import json, resource, sys, torch
from niti.heap import keep_freed_memory
applied = keep_freed_memory()
def touch():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(64 << 20, dtype=torch.uint8)
    t.fill_(1)
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
touch()
touch()
print(json.dumps({"applied": applied, "faults": [touch() for _ in range(7)]}))
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def _faults(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["NITI_HEAP"] = policy
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_kept_heap_reuses_freed_pages_and_release_does_not() -> None:
    """64 MiB is 16,384 pages: with glibc's defaults every allocation faults them in again; kept, most do not."""
    kept, released = _faults("keep"), _faults("release")
    assert kept["applied"] is True and released["applied"] is False
    assert all(f >= 16_000 for f in released["faults"])  # every allocation pages in anew
    assert sorted(kept["faults"])[3] < 1_000  # most reuse the kept pages (the median of 7)


def test_opt_out_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_applied", False)
    monkeypatch.setenv("NITI_HEAP", "release")
    assert heap.keep_freed_memory() is False
    monkeypatch.setenv("NITI_HEAP", "sometimes")
    with pytest.raises(ValueError, match="NITI_HEAP must be 'keep' or 'release'"):
        heap.keep_freed_memory()
    with pytest.raises(ValueError, match="heap policy"):
        heap.child_env("sometimes")
    with pytest.raises(ValueError, match="heap policy"):
        bench.run_bench("lenet", 8, heap="sometimes")


@pytest.mark.parametrize("policy", ["keep", "release"])
def test_bench_workers_run_under_one_policy(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker gets the policy's variables, and an inherited glibc setting cannot leak into "release"."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    show = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
            "('NITI_HEAP', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')}))")
    seen = bench._run_worker([sys.executable, "-c", show], 60, None, policy)
    if policy == "keep":
        assert seen == {"NITI_HEAP": "keep", "MALLOC_MMAP_THRESHOLD_": str(heap.KEEP_THRESHOLD),
                        "MALLOC_TRIM_THRESHOLD_": str(heap.KEEP_THRESHOLD)}
    else:
        assert seen == {"NITI_HEAP": "release", "MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": None}
