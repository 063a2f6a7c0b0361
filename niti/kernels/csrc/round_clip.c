/* The rescale's rounding pass for the CPU: int32 in, int8 out (docs/numerics.md sections 2-3;
 * niti.kernels.cpu_round, pinned against numerics.round_shift).
 *
 * out = sign(x) * min(round(|x| / 2**shift), limit), sign-magnitude, with mode 0 (nearest, ties away from zero),
 * 1 (pseudo-stochastic: the discarded bits' high half against their low half, the low half doubled when shift is
 * odd) or 2 (truncate); shift 0 only clips.  The caller guarantees |x| < 2**31 (bit width <= 31), so |x| fits
 * uint32 and nothing wraps.  The mode is a compile-time constant of each inlined loop and the pointers are
 * `restrict`, so the loops vectorise.
 *
 * Stochastic rounding (niti_round_clip_stochastic_i32_i8) rounds up when u < the discarded bits, u the low `shift`
 * bits of element i's counter-based word of index start + i (section 14): the word is computed in the
 * loop, so no draw tensor is written or read (counter_hash.h).
 */
#include <omp.h>
#include <stdint.h>

#include "counter_hash.h"

static inline void round_clip_range(const int32_t *restrict x, long lo, long hi, int shift, const int mode,
                                    uint32_t limit, int8_t *restrict out) {
    uint32_t low_mask = shift ? (uint32_t)(((uint64_t)1 << shift) - 1) : 0;
    int h = shift >> 1, odd = shift & 1;
    uint32_t h_mask = ((uint32_t)1 << h) - 1;
    int s1 = shift ? shift - 1 : 0;
    for (long i = lo; i < hi; i++) {
        int32_t v = x[i];
        uint32_t a = (uint32_t)(v < 0 ? -(int64_t)v : v);
        uint32_t q = a;
        if (mode == 0) {
            q = (a >> shift) + ((a >> s1) & 1);
        } else if (mode == 1) {
            uint32_t low = a & low_mask;
            q = (a >> shift) + ((low >> h) > ((low & h_mask) << odd));
        } else if (mode == 2) {
            q = a >> shift;
        }
        int32_t s = (int32_t)(q > limit ? limit : q);
        out[i] = (int8_t)(v < 0 ? -s : s);
    }
}

void niti_round_clip_i32_i8(const int32_t *restrict x, long n, int shift, int mode, int32_t limit,
                            int8_t *restrict out, int nt) {
    int m = shift ? mode : 3; /* 3: shift 0, clip only */
    if (n < (1L << 16)) nt = 1; /* below ~64 K elements a parallel region costs more than it saves */
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), k = omp_get_num_threads();
        long lo = n * t / k, hi = n * (t + 1) / k;
        if (m == 0) round_clip_range(x, lo, hi, shift, 0, (uint32_t)limit, out);
        else if (m == 1) round_clip_range(x, lo, hi, shift, 1, (uint32_t)limit, out);
        else if (m == 2) round_clip_range(x, lo, hi, shift, 2, (uint32_t)limit, out);
        else round_clip_range(x, lo, hi, shift, 3, (uint32_t)limit, out);
    }
}

/* 1 <= shift <= 24 (so shift + 7 <= 31 and the draw is one word's low bits); start + n <= 2**32. */
void niti_round_clip_stochastic_i32_i8(const int32_t *restrict x, long n, int shift, int32_t limit, long start,
                                       uint32_t k1, uint32_t k2, int8_t *restrict out, int nt) {
    uint32_t low_mask = (uint32_t)(((uint64_t)1 << shift) - 1);
    if (n < (1L << 16)) nt = 1;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long i = 0; i < n; i++) {
        int32_t v = x[i];
        uint32_t a = (uint32_t)(v < 0 ? -(int64_t)v : v);
        uint32_t u = niti_counter_word((uint32_t)(start + i), k1, k2) & low_mask;
        uint32_t q = (a >> shift) + (u < (a & low_mask));
        int32_t s = (int32_t)(q > (uint32_t)limit ? (uint32_t)limit : q);
        out[i] = (int8_t)(v < 0 ? -s : s);
    }
}
