"""How the first version's coarse softmax gradient differs from the precise one on a model's real logits (issue 12).

The ablation (results/cifar-ablation/) found that switching the precise integer softmax off costs 11 validation
points on CIFAR-10 with float SGD's step and nothing resolvable with the per-tensor step.  This script looks at
the loss error itself: it runs the integer forward of a run's checkpoint (or of a fresh model) over training images,
batch by batch in training mode (per-batch shifts, as a training step sees them; nothing is updated), and feeds the
same int8 logits to both ``softmax_grad`` (2**20 scale) and ``softmax_grad_coarse`` (2**11 scale).  Both are read as
``softmax − onehot`` in real units, and per row it reports:

- the cosine between the two error vectors and the ratio of their norms (coarse / precise);
- the same cosine for the batch's summed errors (the gradient of a per-class offset of the logits) and the norm of
  the summed difference relative to the precise sum: per-row differences that do not cancel over the batch;
- the label entry's error (``p_label − 1``) under each, split by rows the model gets right and wrong;
- the probability the coarse form gives the predicted class, against the precise one;
- the share of off-label entries the coarse form sets to exactly 0 where the precise one is ≥ 2**-8.

    python benchmarks/softmax_bias.py results/cifar-quarter/partial/q-int-s1 --images 2048 --out results/softmax-bias
    python benchmarks/softmax_bias.py fresh:vgg-small-7-quarter --images 2048 --out results/softmax-bias

``--train-steps N`` instead trains fresh models (``fresh:<model>`` sources; the library's defaults but for the
softmax, set by ``--softmax``; a fixed shuffle of the training split, no augmentation, the gb schedule placed on
``--total-steps``) and reports every ``--every`` steps, on the logits each training step computed before its
update, the same comparison and the step's logit exponent and clipped step elements, so that the coarse softmax's
own trajectory can be read against the precise one's.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import niti  # noqa: E402
from niti.data.load import load_dataset  # noqa: E402
from niti.nn.loss import GRAD_BITS, softmax_grad, softmax_grad_coarse  # noqa: E402

COARSE_BITS = 11  # softmax_grad_coarse's scale


def _batch_sums(p: torch.Tensor, c: torch.Tensor) -> tuple[float, float]:
    """Cosine between the batch's summed precise and coarse errors (the gradient of a per-class logit offset) and
    the norm of their difference relative to the precise sum: where the per-row differences do not cancel."""
    sp, sc = p.sum(dim=0), c.sum(dim=0)
    return float(torch.dot(sp, sc) / (sp.norm() * sc.norm()).clamp_min(1e-12)), float((sc - sp).norm() / sp.norm())


def _model(source: str, seed: int) -> tuple[niti.models.IntegerModel, str]:
    if source.startswith("fresh:"):
        return niti.build(source.split(":", 1)[1], seed=seed), source
    return niti.load(source), source


def _stats(model, images: torch.Tensor, labels: torch.Tensor, batch: int) -> dict:
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("cos", "ratio", "lab_p", "lab_c", "right", "top_p",
                                                            "top_c", "zeroed", "offs", "bcos", "bdiff")}
    exponents: list[int] = []
    model.net.train(True)
    for i in range(0, images.shape[0], batch):
        x, y = images[i:i + batch], labels[i:i + batch]
        logits = model.forward(x)
        exponents.append(logits.e)
        p = softmax_grad(logits, y).double() / 2**GRAD_BITS
        c = softmax_grad_coarse(logits, y).double() / 2**COARSE_BITS
        idx = torch.arange(y.shape[0])
        rows["cos"].append(torch.nn.functional.cosine_similarity(p, c, dim=1))
        bcos, bdiff = _batch_sums(p, c)
        rows["bcos"].append(torch.tensor([bcos]))
        rows["bdiff"].append(torch.tensor([bdiff]))
        rows["ratio"].append(c.norm(dim=1) / p.norm(dim=1))
        rows["lab_p"].append(p[idx, y])
        rows["lab_c"].append(c[idx, y])
        pred = logits.m.argmax(dim=1)
        rows["right"].append(pred == y)
        onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
        rows["top_p"].append((p + onehot)[idx, pred])
        rows["top_c"].append((c + onehot)[idx, pred])
        off = onehot == 0
        big = off & (p >= 2**-8)
        rows["zeroed"].append((big & (c == 0)).sum(dim=1).double())
        rows["offs"].append(big.sum(dim=1).double())
    t = {k: torch.cat(v) for k, v in rows.items()}
    right = t["right"]

    def mean(v: torch.Tensor, where: torch.Tensor | None = None) -> float | None:
        v = v if where is None else v[where]
        return None if v.numel() == 0 else round(float(v.mean()), 4)

    return {
        "images": int(images.shape[0]),
        "accuracy_in_batch_mode": round(100 * float(right.double().mean()), 2),
        "logit_exponents": sorted(set(exponents)),
        "cosine_mean": mean(t["cos"]), "cosine_p10": round(float(t["cos"].quantile(0.1)), 4),
        "norm_ratio_mean": mean(t["ratio"]),
        "batch_sum_cosine_mean": mean(t["bcos"]), "batch_sum_difference_mean": mean(t["bdiff"]),
        "norm_ratio_right": mean(t["ratio"], right), "norm_ratio_wrong": mean(t["ratio"], ~right),
        "label_error_precise_right": mean(t["lab_p"], right), "label_error_coarse_right": mean(t["lab_c"], right),
        "label_error_precise_wrong": mean(t["lab_p"], ~right), "label_error_coarse_wrong": mean(t["lab_c"], ~right),
        "top_prob_precise": mean(t["top_p"]), "top_prob_coarse": mean(t["top_c"]),
        "offlabel_zeroed_share": round(float(t["zeroed"].sum() / t["offs"].sum().clamp_min(1)), 4),
    }


def _trajectory(model_name: str, softmax: str, images: torch.Tensor, labels: torch.Tensor, a) -> list[dict]:
    model = niti.build(model_name, seed=a.seed, softmax=softmax, total_steps=a.total_steps)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(a.seed))
    out, window = [], []
    for step in range(a.train_steps):
        i = order[(step * a.batch_size) % images.shape[0]:][:a.batch_size]
        x, y = images[i], labels[i]
        logits = model.train_step(x, y)
        p = softmax_grad(logits, y).double() / 2**GRAD_BITS
        c = softmax_grad_coarse(logits, y).double() / 2**COARSE_BITS
        clips = sum(q.step_clips for q in model.parameters())
        window.append((logits.e, float(torch.nn.functional.cosine_similarity(p, c, dim=1).mean()), *_batch_sums(p, c),
                       float((c.norm(dim=1) / p.norm(dim=1).clamp_min(1e-12)).mean()),
                       float((logits.m.argmax(dim=1) == y).double().mean()), clips, p.norm(dim=1).mean().item()))
        if (step + 1) % a.every == 0:
            e, cos, bcos, bdiff, ratio, acc, clip, pn = zip(*window)
            row = {"softmax": softmax, "step": step + 1, "logit_exponents": sorted(set(e)),
                   "cosine_mean": round(sum(cos) / len(cos), 4), "batch_sum_cosine_mean": round(sum(bcos) / len(bcos), 4),
                   "batch_sum_difference_mean": round(sum(bdiff) / len(bdiff), 4), "norm_ratio_mean": round(sum(ratio) / len(ratio), 4),
                   "precise_error_norm": round(sum(pn) / len(pn), 4), "batch_accuracy": round(100 * sum(acc) / len(acc), 2),
                   "step_clips_total": clip[-1]}
            print(json.dumps(row), flush=True)
            out.append(row)
            window = []
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help="run directories / checkpoints, or fresh:<model> for an initial model")
    ap.add_argument("--images", type=int, default=2048, help="training images from the start of the split")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="seed of fresh: models")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=0, help="train fresh: models this many steps instead")
    ap.add_argument("--total-steps", type=int, default=1404, help="steps the gb schedule spans (4 epochs of 45,000)")
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--softmax", default="precise,coarse", help="softmaxes to train with (--train-steps)")
    ap.add_argument("--out", type=Path, default=None, help="directory for softmax_bias.json (trajectory.json with --train-steps)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = load_dataset("cifar10")
    images, labels = data.x_train[:a.images], data.y_train[:a.images]
    images = images if isinstance(images, torch.Tensor) else torch.from_numpy(images.copy())
    labels = (labels if isinstance(labels, torch.Tensor) else torch.from_numpy(labels)).to(torch.int64)
    report = {"command": "python benchmarks/softmax_bias.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "results": {}}
    for source in a.sources if a.train_steps else []:
        name = source.split(":", 1)[1]
        for softmax in a.softmax.split(","):
            report["results"][f"{name}:{softmax}"] = _trajectory(name, softmax, images, labels, a)
    for source in a.sources if not a.train_steps else []:
        model, name = _model(source, a.seed)
        with torch.no_grad():
            report["results"][name] = {"step": model.step, **_stats(model, images, labels, a.batch_size)}
        print(name, json.dumps(report["results"][name]))
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / ("trajectory.json" if a.train_steps else "softmax_bias.json")).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
