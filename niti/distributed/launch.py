"""Start N local ranks with torchrun-style environment variables and watch them.

The launcher hosts the rendezvous store itself (on a free loopback port,
reserved by binding, so no port race) and every rank connects to it as a
client, as torchrun does.  If any rank exits non-zero or is killed, the
others are terminated at once and the launcher returns non-zero, naming the
rank.  A rank that *hangs* makes the others fail at their next collective
after the process group's timeout (``init_from_env(timeout_s)``), which the
launcher then sees as a failure; ``timeout_s`` here bounds the whole job.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

__all__ = ["launch", "launch_command"]

_PREFIX = "niti launch:"


def _say(msg: str) -> None:
    print(f"{_PREFIX} {msg}", file=sys.stderr, flush=True)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _rank_env(base: dict[str, str], rank: int, nproc: int, port: int, threads: int) -> dict[str, str]:
    env = dict(base)
    env.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        # Every rank is a client of the launcher's store (torch.distributed.rendezvous honours this).
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    })
    # Share the cores instead of oversubscribing them (torchrun sets 1); an explicit setting wins.
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every live rank, then SIGKILL whatever is still alive after ``grace_s``."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            p.terminate()
        except ProcessLookupError:  # pragma: no cover - raced with its exit
            pass
    deadline = time.monotonic() + grace_s
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class _Terminated(Exception):
    pass


def launch_command(nproc: int, command: Sequence[str], timeout_s: float | None = None, *,
                   grace_s: float = 10.0, env: dict[str, str] | None = None) -> int:
    """Run ``command`` as ranks 0..nproc-1 of one job on this machine; 0 when every rank exits 0.

    On the first rank that exits non-zero (or dies by a signal) the others
    are terminated (SIGTERM, then SIGKILL after ``grace_s``) and its exit
    code is returned (128 + signal number for a signal).  With ``timeout_s``
    the whole job is stopped after that many seconds and 124 is returned.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if not command:
        raise ValueError("command must not be empty")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
    from torch.distributed import TCPStore  # the launcher hosts the rendezvous store

    store = TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)
    threads = max(1, (os.cpu_count() or 1) // nproc)
    base = dict(os.environ if env is None else env)
    procs: list[subprocess.Popen] = []
    exits: queue.Queue[tuple[int, int]] = queue.Queue()

    def watch(rank: int, p: subprocess.Popen) -> None:
        exits.put((rank, p.wait()))

    # A SIGTERM to the launcher (a scheduler stopping the job) must not orphan the ranks.
    own_handler = threading.current_thread() is threading.main_thread()
    if own_handler:
        def on_sigterm(signum: int, frame: object) -> None:
            raise _Terminated()
        old_handler = signal.signal(signal.SIGTERM, on_sigterm)
    start = time.monotonic()
    try:
        for rank in range(nproc):
            p = subprocess.Popen(list(command), env=_rank_env(base, rank, nproc, store.port, threads))
            procs.append(p)
            threading.Thread(target=watch, args=(rank, p), daemon=True, name=f"niti-rank{rank}").start()
        finished = 0
        while finished < nproc:
            left = None if timeout_s is None else timeout_s - (time.monotonic() - start)
            if left is not None and left <= 0:
                running = [r for r, p in enumerate(procs) if p.poll() is None]
                _say(f"job exceeded its {timeout_s:g} s limit; stopping ranks {running}")
                _stop(procs, grace_s)
                return 124
            try:
                rank, code = exits.get(timeout=left)
            except queue.Empty:
                continue
            finished += 1
            if code != 0:
                others = [r for r, p in enumerate(procs) if r != rank and p.poll() is None]
                _say(f"rank {rank} (pid {procs[rank].pid}) {_describe(code)}"
                     + (f"; stopping ranks {others}" if others else ""))
                _stop(procs, grace_s)
                return code if code > 0 else 128 - code
        return 0
    except (KeyboardInterrupt, _Terminated):
        _say("interrupted; stopping all ranks")
        _stop(procs, grace_s)
        return 130
    finally:
        _stop(procs, grace_s)  # never leave a rank behind (no-op when all have exited)
        if own_handler:
            signal.signal(signal.SIGTERM, old_handler)
        del store


def launch(nproc: int, argv: list[str], timeout_s: float | None = None, *, grace_s: float = 10.0) -> int:
    """``python -m niti <argv>`` as ``nproc`` data-parallel ranks on this machine (see ``launch_command``)."""
    return launch_command(nproc, [sys.executable, "-m", "niti", *argv], timeout_s, grace_s=grace_s)
