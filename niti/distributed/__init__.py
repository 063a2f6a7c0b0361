"""Data-parallel integer training on torch.distributed (gloo), bit-identical to one process.

Typical use inside each rank (started by ``launch`` or torchrun)::

    info = init_from_env()                 # None when not distributed
    model = build("lenet", seed=0)         # same seed on every rank
    if info is not None:
        attach(model, info)                # verifies replicas, installs all-reduces
    for images, labels in batches:         # the same global batches on every rank
        model.train_step(*shard(images, labels, info))
    correct = evaluate_sharded(model, x_val, y_val, info)   # a collective too: every rank calls it

Everything batched is a collective once attached: all ranks must run the
same sequence of ``train_step`` / ``predict`` calls, each on its shard.
"""

from .data_parallel import (Collectives, CommStats, attach, evaluate_sharded, fingerprint_digests, replica_fingerprint,
                            verify_replicas)
from .group import DistInfo, all_sum_float, all_sum_int, init_from_env, shard, shutdown
from .launch import launch, launch_command

__all__ = ["Collectives", "CommStats", "DistInfo", "all_sum_float", "all_sum_int", "attach", "evaluate_sharded",
           "fingerprint_digests",
           "init_from_env", "launch", "launch_command", "replica_fingerprint", "shard", "shutdown",
           "verify_replicas"]
