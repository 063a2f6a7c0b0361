/* The exact aligned sum of two int8 tensors for the CPU (niti.kernels.cpu_add; numerics.aligned_sum is the
 * reference): s = a * 2**sa + b * 2**sb in int32, for shifts 0 <= sa, sb <= 22 (|s| <= 2 * 128 * 2**22 = 2**30: no
 * overflow).  Multiplication by the power of two rather than a left shift, which C leaves undefined for negative
 * values.
 *
 * niti_add_shifted_i8 writes s (one pass that reads 2 bytes and writes 4 per element).  A rescale of s to int8
 * needs no int32 tensor: niti_add_shifted_max_i8 gives max |s| (the bit width) and niti_add_shifted_round_i8 the
 * rounded, clipped int8 result (round_one.h, the element of round_clip.c), each forming s in the loop: two passes
 * that read 2 bytes per element instead of three over 4-byte values.  Vectorised; the thread count cannot change a
 * bit (max is order-free, every element independent).
 */
#include <omp.h>
#include <stdint.h>

#include "counter_hash.h"
#include "round_one.h"

#define NITI_SMALL (1L << 16) /* below ~64 K elements a parallel region costs more than it saves */

void niti_add_shifted_i8(const int8_t *restrict a, int sa, const int8_t *restrict b, int sb, long n,
                         int32_t *restrict out, int nt) {
    int32_t ma = (int32_t)1 << sa, mb = (int32_t)1 << sb;
    if (n < NITI_SMALL) nt = 1;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long i = 0; i < n; i++) out[i] = (int32_t)a[i] * ma + (int32_t)b[i] * mb;
}

int32_t niti_add_shifted_max_i8(const int8_t *restrict a, int sa, const int8_t *restrict b, int sb, long n, int nt) {
    int32_t ma = (int32_t)1 << sa, mb = (int32_t)1 << sb, best = 0;
    if (n < NITI_SMALL) nt = 1;
#pragma omp parallel for schedule(static) num_threads(nt) reduction(max : best)
    for (long i = 0; i < n; i++) {
        int32_t v = (int32_t)a[i] * ma + (int32_t)b[i] * mb;
        v = v < 0 ? -v : v;
        best = v > best ? v : best;
    }
    return best;
}

static inline void add_round_range(const int8_t *restrict a, int32_t ma, const int8_t *restrict b, int32_t mb,
                                   long lo, long hi, const niti_round_consts k, const int mode, long start,
                                   uint32_t k1, uint32_t k2, int8_t *restrict out) {
    for (long i = lo; i < hi; i++) {
        uint32_t u = mode == 4 ? niti_counter_word((uint32_t)(start + i), k1, k2) : 0;
        out[i] = niti_round_one((int32_t)a[i] * ma + (int32_t)b[i] * mb, k, mode, u);
    }
}

/* out = round_clip(s, shift, mode, limit): mode 0 nearest, 1 pseudo-stochastic, 2 truncate, 4 stochastic with
 * element i's draw the counter word of index start + i under keys k1, k2 (1 <= shift <= 24; start + n <= 2**32);
 * shift 0 only clips.  The bits cpu_round's passes give for the stored sum. */
void niti_add_shifted_round_i8(const int8_t *restrict a, int sa, const int8_t *restrict b, int sb, long n, int shift,
                               int mode, int32_t limit, long start, uint32_t k1, uint32_t k2, int8_t *restrict out,
                               int nt) {
    int32_t ma = (int32_t)1 << sa, mb = (int32_t)1 << sb;
    int m = shift ? mode : 3; /* 3: shift 0, clip only */
    const niti_round_consts k = niti_round_setup(shift, (uint32_t)limit);
    if (n < NITI_SMALL) nt = 1;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), nth = omp_get_num_threads();
        long lo = n * t / nth, hi = n * (t + 1) / nth;
        if (m == 0) add_round_range(a, ma, b, mb, lo, hi, k, 0, start, k1, k2, out);
        else if (m == 1) add_round_range(a, ma, b, mb, lo, hi, k, 1, start, k1, k2, out);
        else if (m == 2) add_round_range(a, ma, b, mb, lo, hi, k, 2, start, k1, k2, out);
        else if (m == 4) add_round_range(a, ma, b, mb, lo, hi, k, 4, start, k1, k2, out);
        else add_round_range(a, ma, b, mb, lo, hi, k, 3, start, k1, k2, out);
    }
}
