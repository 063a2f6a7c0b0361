"""Integer batch normalisation: L1 batch norm with exact integer statistics (docs/numerics.md §13).

Per channel, over the whole batch (every data-parallel rank): the integer
mean is kept as the exact fraction ``S / n`` (centred values ``c = n·x − S``
need no division), the spread is the mean absolute deviation ``D / n²``
(``D = Σ|c|``: no squares, no square root), and

    x̂ = (x − μ) / (√(π/2) · MAD)

which has unit standard deviation for Gaussian data, as ``x̂`` of float
BatchNorm does.  This is the L1 batch norm of Hoffer, Banner, Golan and
Soudry ("Norm matters: efficient and accurate normalization schemes in deep
networks", NeurIPS 2018), proposed there precisely for low-precision
training: it replaces the variance by a sum of absolute values.  The one
division per channel becomes an integer reciprocal ``R_c · 2**-W_c`` with 31
significant bits, so the per-element work is one multiply and one rounding
shift.  ``x̂`` has 12 fractional bits and is clipped to ±128; ``γ x̂ + β``
(int8 ``γ`` and ``β``, both ``IntParameter``) is rescaled to int8 like every
activation.  Backward is the exact derivative of that formula, computed with
integer per-channel sums and rounded per-channel constants; running mean and
MAD (fixed point, 2⁻²⁴ units) serve batch-independent inference.
"""

from __future__ import annotations

import torch
from torch import Tensor

# One definition of the per-channel integer arithmetic shared with the exported numpy runner (pure Python ints).
from ..infer_numpy import reciprocals as _reciprocals
from ..infer_numpy import round_div
from ..kernels import cpu_bn, fused
from ..numerics import CALIBRATION_DECAY_SHIFT, IntTensor, aligned_sum, round_shift, static_shift
from .module import IntParameter, Module

__all__ = ["BatchNorm2d", "KAPPA", "KAPPA_BITS", "NORM_FRAC_BITS", "RUNNING_EXPONENT", "round_div"]

#: ``√(2/π)`` with 15 fractional bits: ``x̂ = c · n · KAPPA / (D · 2**15)`` has unit variance for Gaussian data.
KAPPA_BITS = 15
KAPPA = 26145  # round(2**15 * sqrt(2 / pi)), checked by tests/test_norm.py
#: Fractional bits of ``x̂`` (and of the backward's per-channel means).
NORM_FRAC_BITS = 12
#: ``|x̂| < 2**XHAT_BITS`` in units of 2**-NORM_FRAC_BITS (±128 standard units).
XHAT_BITS = NORM_FRAC_BITS + 7
#: Running statistics are integers in units of 2**RUNNING_EXPONENT (real values, independent of any exponent).
RUNNING_EXPONENT = -24
#: Values per channel and batch (N·H·W over all ranks) must stay below this: 254 · n² < 2**63.
MAX_COUNT = 1 << 27
#: Significant bits of the backward's per-channel multiplier.
MULTIPLIER_BITS = 15


def _shift(a: int, by: int) -> int:
    """``a · 2**by`` rounded to nearest (ties away from zero) when ``by < 0``."""
    return a << by if by >= 0 else round_div(a, 1 << -by)


def _common_mantissas(nums: list[int], shifts: list[int], nbits: int) -> tuple[list[int], int]:
    """``v_c = nums[c] · 2**-shifts[c]`` as mantissas ``k_c`` with one exponent ``E``: ``v_c ≈ k_c · 2**E``,
    ``|k_c| ≤ 2**nbits`` (nearest rounding)."""
    tops = [abs(a).bit_length() - s for a, s in zip(nums, shifts) if a]
    if not tops:
        return [0] * len(nums), 0
    exp = max(tops) - nbits
    return [_shift(a, -s - exp) for a, s in zip(nums, shifts)], exp


def _gather(table: Tensor, rows: Tensor) -> Tensor:
    """A (256, C) table looked up by each element's int8 input value (``rows``: int8, rows × C): a C loop for int8
    tables on the CPU, else a PyTorch gather by the element's table index."""
    if table.dtype == torch.int8 and cpu_bn.available(rows, table):
        return cpu_bn.gather(table, rows)
    return fused.bn_gather(table, fused.bn_value_index(rows))


def _value_sums(rows: Tensor, g: Tensor | None = None) -> Tensor:
    """int64 (256, C): per (input value, channel) the count of elements, or the sum of ``g`` over them."""
    if cpu_bn.available(rows) and (out := cpu_bn.value_sums(rows, g)) is not None:
        return out
    index = fused.bn_value_index(rows)
    return fused.bn_value_counts(index, rows.shape[-1]) if g is None else fused.bn_value_sums(index, g)


#: The signs of c = n·x − S, as the rows of the backward's (3, C) table.
_SIGNS = torch.tensor([[-1], [0], [1]], dtype=torch.int64)


def _sign_thresholds(sign: Tensor) -> tuple[Tensor, Tensor]:
    """int32 (C,) ``above`` and ``below`` of a (256, C) table of sign(n·x − S) by input value (ascending, n > 0: each
    column is −1s, then 0s, then +1s): the sign is +1 exactly where ``x > above``, −1 exactly where ``x < below``."""
    above = 127 - (sign > 0).sum(dim=0)
    below = (sign < 0).sum(dim=0) - 128
    return above.to(torch.int32), below.to(torch.int32)


def _channel_tensor(values: list[int], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=torch.int64, device=like.device)


class BatchNorm2d(Module):
    """Integer L1 batch normalisation of NHWC int8 activations, learned int8 ``γ`` (weight) and ``β`` (bias)."""

    def __init__(self, num_features: int, *, accumulator_bits: int = 16) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        self.num_features = num_features
        # γ = 1 (64 · 2**-6) and β = 0, both able to reach ±2 (the int16 master saturates at 127 · 2**e).
        self.weight = IntParameter(torch.full((num_features,), 64, dtype=torch.int8), -6, accumulator_bits)
        self.bias = IntParameter(torch.zeros(num_features, dtype=torch.int8), -6, accumulator_bits)
        #: Running mean and MAD in units of 2**RUNNING_EXPONENT (int64, per channel); None before training.
        self.running_mean: Tensor | None = None
        self.running_mad: Tensor | None = None
        #: While recalibrating: per-channel sums of the batches' means and MADs, and the batch count.
        self._collected: tuple[list[int], list[int], int] | None = None

    # ------------------------------------------------------------------ state
    def named_parameters(self) -> list[tuple[str, IntParameter]]:
        return [("weight", self.weight), ("bias", self.bias)]

    def named_buffers(self) -> list[tuple[str, Tensor]]:
        if self.running_mean is None or self.running_mad is None:
            return []
        return [("running_mean", self.running_mean), ("running_mad", self.running_mad)]

    def load_buffers(self, state: dict[str, Tensor]) -> None:
        mean, mad = state.get("running_mean"), state.get("running_mad")
        if (mean is None) != (mad is None):
            raise ValueError("running_mean and running_mad must be given together")
        for name, t in (("running_mean", mean), ("running_mad", mad)):
            if t is not None and (t.dtype != torch.int64 or tuple(t.shape) != (self.num_features,)):
                raise ValueError(f"{name} must be int64 ({self.num_features},), got {t.dtype} {tuple(t.shape)}")
        if mad is not None and int(mad.min()) < 0:
            raise ValueError("running_mad must be non-negative")
        device = self.weight.m.device
        self.running_mean = None if mean is None else mean.to(device)
        self.running_mad = None if mad is None else mad.to(device)

    # ---------------------------------------------------------------- compute
    def _affine(self, xhat: Tensor, rows: Tensor, shape: torch.Size, ctx: dict | None,
                counts: Tensor | None = None) -> IntTensor:
        """``γ·x̂ + β`` rescaled to int8, from the (256, C) table ``xhat`` of x̂ per input value and channel.

        When the rounding depends on the value alone (any mode but ``stochastic``, or a static shift), the
        table itself is rescaled and the int8 result gathered: the same bits as rescaling every element, since
        the whole-batch bit width is that of the values present (``counts``).  Traces take the element path.
        """
        g, b = self.weight, self.bias
        prod = xhat * g.m.to(torch.int32)  # |x̂| < 2**19, |γ| ≤ 127: < 2**26
        table, e = aligned_sum([(prod, g.e - NORM_FRAC_BITS, XHAT_BITS + 7), (b.m, b.e, 7)])
        rt = self.runtime
        if rt.recorder is None:
            if not self.training and self.static_inference and self.calibration is not None:
                shift = static_shift(self.calibration, headroom=self.static_headroom)
                out = _gather(rt.rescale_static(table, 7, shift, "activation"), rows)
                return IntTensor(out.reshape(shape), e + shift)
            if self.training and counts is not None and rt.mode("activation") != "stochastic":
                rescaled, shift = self.rescale_activation(torch.where(counts > 0, table, 0), ctx)
                return IntTensor(_gather(rescaled, rows).reshape(shape), e + shift)
        out, shift = self.rescale_activation(_gather(table, rows).reshape(shape), ctx)
        return IntTensor(out, e + shift)

    def normalised(self, ctx: dict) -> Tensor:
        """x̂ (int32, rows × C, 2**-NORM_FRAC_BITS units) of the training-mode forward that filled ``ctx``."""
        return _gather(ctx["xhat"], ctx["rows"])

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        if x.m.dim() != 4 or x.m.shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) needs NHWC input with {self.num_features} channels, "
                             f"got shape {tuple(x.m.shape)}")
        if x.m.dtype != torch.int8:
            raise ValueError(f"BatchNorm2d needs int8 mantissas, got {x.m.dtype}")
        if not self.training and self.running_mean is not None:
            return self._forward_running(x, ctx)
        rt = self.runtime
        shape, ch = x.m.shape, self.num_features
        rows = x.m.reshape(-1, ch)
        n = rows.shape[0] * rt.world_size
        if n >= MAX_COUNT:
            raise ValueError(f"BatchNorm2d: {n} values per channel in one batch; at most {MAX_COUNT - 1} keep "
                             "D = Σ|n·x − S| ≤ 254·n² below 2**63 (use a smaller batch)")
        # Every per-channel sum is a sum over the 256 int8 values weighted by how often each occurs.
        counts = _value_sums(rows)
        values = fused.VALUES.to(x.m.device).expand(256, ch)
        s = rt.reduce_sum((counts * values).sum(dim=0))
        c = values * n - s  # c = n·x − S per (value, channel)
        d = rt.reduce_sum((counts * c.abs()).sum(dim=0))
        sign_sum = (counts * torch.sign(c)).sum(dim=0)
        top = torch.where(counts > 0, c.abs(), 0).amax(dim=0, keepdim=True).amax(dim=1)  # 0 when none present
        read = torch.cat((s, d, top)).tolist()  # one host read for all per-channel sums
        sums, devs, top = read[:ch], read[ch:2 * ch], read[2 * ch]
        # |c| ≤ D / 2 (the c sum to zero), so |c| · R stays below 2**62 with 31-bit reciprocals.
        cbits = rt.reduce_max(top.bit_length())
        r, w = _reciprocals(n * KAPPA << NORM_FRAC_BITS, [dv << KAPPA_BITS for dv in devs], min(31, 62 - cbits))
        xhat, sign = fused.bn_normalise(values, n, s, _channel_tensor(r, x.m), _channel_tensor(w, x.m),
                                        (1 << XHAT_BITS) - 1)
        if rt.recorder is not None:
            rt.record("xhat", _gather(xhat, rows))
        if ctx is not None:
            ctx.update(rows=rows, xhat=xhat, sign=sign, sign_sum=sign_sum, r=r, w=w, n=n, e=x.e, shape=shape)
        if ctx is not None or self._collected is not None:
            self._update_running(sums, devs, n, x.e)
        return self._affine(xhat, rows, shape, ctx, counts)

    def begin_recalibration(self) -> None:
        """Collect the statistics of the coming training-mode batches instead of moving the running averages."""
        self._collected = ([0] * self.num_features, [0] * self.num_features, 0)

    def end_recalibration(self, store: bool = True) -> None:
        """Stop collecting; with ``store`` (and at least one batch seen) the running mean and MAD become the
        exact averages of the collected batches' (nearest rounding, in 2**RUNNING_EXPONENT units)."""
        collected, self._collected = self._collected, None
        if not store or collected is None or collected[2] == 0:
            return
        means, mads, k = collected
        self.running_mean = _channel_tensor([round_div(v, k) for v in means], self.weight.m)
        self.running_mad = _channel_tensor([round_div(v, k) for v in mads], self.weight.m)

    def _update_running(self, sums: list[int], devs: list[int], n: int, e: int) -> None:
        """Move the running mean ``S/n`` and MAD ``D/n²`` (in 2**RUNNING_EXPONENT units) 2**-4 toward the batch's
        (or, while recalibrating, add them to the collected sums)."""
        up = e - RUNNING_EXPONENT
        mean = [_shift(round_div(s << max(up, 0), n), min(up, 0)) for s in sums]
        mad = [_shift(round_div(dv << max(up, 0), n * n), min(up, 0)) for dv in devs]
        if self._collected is not None:
            means, mads, k = self._collected
            self._collected = ([a + b for a, b in zip(means, mean)], [a + b for a, b in zip(mads, mad)], k + 1)
            return
        if self.running_mean is None or self.running_mad is None:
            new_mean, new_mad = mean, mad
        else:
            k = CALIBRATION_DECAY_SHIFT
            old_mean, old_mad = torch.stack((self.running_mean, self.running_mad)).tolist()  # one host read
            new_mean = [r + ((b - r) >> k) for r, b in zip(old_mean, mean)]
            new_mad = [r + ((b - r) >> k) for r, b in zip(old_mad, mad)]
        device = self.weight.m.device
        self.running_mean = torch.tensor(new_mean, dtype=torch.int64, device=device)
        self.running_mad = torch.tensor(new_mad, dtype=torch.int64, device=device)

    def _forward_running(self, x: IntTensor, ctx: dict | None) -> IntTensor:
        """Evaluation with the running statistics: every image is normalised alone (batch-independent)."""
        assert self.running_mean is not None and self.running_mad is not None
        shape, ch = x.m.shape, self.num_features
        up = x.e - RUNNING_EXPONENT
        # c = x · 2**up − running_mean per (value, channel), in the training chain's form n·x − s (a negative
        # up rounds x first).
        values = fused.VALUES.to(x.m.device).expand(256, ch)
        scale = 1 << up if up >= 0 else 1
        if up < 0:
            values = round_shift(values, -up, "nearest")
        mean_max = int(self.running_mean.abs().max()) if ch else 0
        # A bound from the formats alone (not from this batch), so the rounding is the same for any batch.
        cbits = (max(_shift(127, up), 1) + mean_max).bit_length()
        r, w = _reciprocals(KAPPA << NORM_FRAC_BITS, [m << KAPPA_BITS for m in self.running_mad.tolist()],
                            min(31, 62 - cbits))
        xhat, _ = fused.bn_normalise(values, scale, self.running_mean, _channel_tensor(r, x.m),
                                     _channel_tensor(w, x.m), (1 << XHAT_BITS) - 1)
        return self._affine(xhat, x.m.reshape(-1, ch), shape, ctx)

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor | None:
        """The exact derivative of L1 batch norm (Hoffer et al. 2018) in integers (docs/numerics.md §13):

        ``dx = γ/s · (g − mean(g) − √(π/2) · mean(g·x̂) · (sign(c) − mean(sign(c))))``, ``s = √(π/2) · MAD``.
        """
        if not ctx:
            raise RuntimeError(f"{self!r}.backward called without a training-mode forward (no saved context)")
        rt, ch, q = self.runtime, self.num_features, NORM_FRAC_BITS
        g = err.m.reshape(-1, ch)
        rows, xhat, sign, n = ctx["rows"], ctx["xhat"], ctx["sign"], ctx["n"]
        mode = rt.mode("error")
        # The C loops round with counter-based bits only (generator draws take the PyTorch path); their first pass
        # also keeps each (sign class, channel)'s smallest and largest error, which bound the rescale's bit width.
        c_loops = (self.propagate_error and rt.recorder is None and mode in cpu_bn.MODES and cpu_bn.available(g)
                   and (mode != "stochastic" or rt.random_bits == "counter"))
        ranges = None
        if c_loops:
            above, below = _sign_thresholds(sign)  # the sign classes' bounds (the error term depends on x via them)
            ranges = cpu_bn.value_ranges(rows, g, above, below)
        # Σ g and Σ g·x̂ per channel from the sums of g per (input value, channel): Σ over values of those sums,
        # and of x̂(value) times them.
        g_sums = _value_sums(rows, g) if ranges is None else ranges[0]
        a_local = g_sums.sum(dim=0)
        g2_local = (g_sums * xhat).sum(dim=0)
        # The gradients stay local: the model sums every gradient over the ranks after backward.
        self.weight.grad, self.bias.grad = g2_local, a_local
        self.weight.grad_e, self.bias.grad_e = err.e - q, err.e  # x̂ has q fractional bits
        if not self.propagate_error:
            return None
        read = torch.cat((rt.reduce_sum(a_local), rt.reduce_sum(g2_local), rt.reduce_sum(ctx["sign_sum"]),
                          self.weight.m.to(torch.int64))).tolist()  # one host read
        a_sum, g2_sum, sg_sum, gamma = read[:ch], read[ch:2 * ch], read[2 * ch:3 * ch], read[3 * ch:]
        mean_g = torch.tensor([round_div(a << q, n) for a in a_sum], dtype=torch.int64, device=g.device)
        # √(π/2) · mean(g·x̂) · 2**q = G2 · 2**q / (n · 2**q_x̂ · KAPPA / 2**15), with q_x̂ = q.
        slope = torch.tensor([round_div(v << KAPPA_BITS, n * KAPPA) for v in g2_sum], dtype=torch.int64,
                             device=g.device)
        mean_sign = torch.tensor([round_div(v << q, n) for v in sg_sum], dtype=torch.int64, device=g.device)
        # γ / s per x mantissa unit: γ_m · n · R_c · 2**-(W_c + q) (R from the forward), one exponent for all.
        k, k_e = _common_mantissas([gm * n * r for gm, r in zip(gamma, ctx["r"])], ctx["w"],
                                   MULTIPLIER_BITS)
        # z = ((g·2**q − mean_g)·2**q) − slope·(sign·2**q − mean_sign), |z| < 2**40, times k (|k| ≤ 2**15),
        # expanded as (k·2**2q)·g + t(value), t = −k·mean_g·2**q − k·slope·(sign·2**q − mean_sign): the same integer.
        kt = _channel_tensor(k, g)
        # t depends on the input value only through sign(c): its three rows (sign −1, 0, +1), and per value the row
        # of that value's sign.
        rows3 = -kt * (mean_g << q) - kt * slope * ((_SIGNS.to(g.device) << q) - mean_sign)
        table = rows3.gather(0, sign.to(torch.int64) + 1)
        mult = kt << (2 * q)  # k_c · 2**2q per unit of the int8 error
        if ranges is not None:
            # The same rescale without an int64 tensor: the bit width from the ranges, the rounding in one pass
            # (a stochastic one hashes the draw rt.rescale would make inside the loop), each element's entry
            # selected by its sign where the 32-bit loop applies, else gathered from the table.
            shift = rt.shift_for_width(cpu_bn.error_max(rows3, mult, ranges[1], ranges[2]).bit_length(), 7)
            keys = rt.counter_keys("rounding", ctx["shape"], batched=True) if mode == "stochastic" and shift else None
            out = cpu_bn.error_round_signs(g, rows, rows3, above, below, mult, shift, mode, keys=keys)
            if out is None:
                out = cpu_bn.error_round(g, rows, table, mult, shift, mode, keys=keys)
            out = out.reshape(ctx["shape"])
        else:
            wide = fused.bn_error(g, fused.bn_value_index(rows), table, fused.VALUES.to(g.device) * mult)
            out, shift = rt.rescale(wide.reshape(ctx["shape"]), 7, "error")
        return IntTensor(out, err.e + self.weight.e + k_e - q - 2 * q - ctx["e"] + shift)

    def extra_repr(self) -> str:
        return f"{self.num_features}"
