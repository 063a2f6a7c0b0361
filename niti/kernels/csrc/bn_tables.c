/* Batch norm's per-element passes over (value, channel) tables (docs/numerics.md section 13), for the CPU.
 *
 * Rows of C channels; (x + 128) * C + c is an element's entry in a (256, C) table of its int8 input value x.  An
 * element's error term is its int8 error value g times its channel's multiplier m[c].  Integer instructions only; every sum is exact (int64) and
 * independent of the order and of the thread count.  Pointers are `restrict` (the caller passes distinct tensors):
 * without it every int8 store may alias the tables, and the loops reload instead of vectorising (3x slower).
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "counter_hash.h"

/* The largest |t1[x's entry] + m[c] * g| over the elements, from the smallest and largest g per (value, channel)
 * entry (lo and hi of niti_bn_value_sums; lo > hi: no element): |t + m g| is convex in g, so an entry's largest
 * value is at one of its two ends.  The caller guarantees |t1| + |m| * 128 < 2**62. */
int64_t niti_bn_range_max(const int64_t *restrict t1, const int64_t *restrict m, const int8_t *restrict lo,
                          const int8_t *restrict hi, long C) {
    int64_t best = 0;
    for (long b = 0; b < 256 * C; b++) {
        if (lo[b] > hi[b]) continue;
        int64_t c = b % C, u = t1[b] + m[c] * lo[b], v = t1[b] + m[c] * hi[b];
        u = u < 0 ? -u : u;
        v = v < 0 ? -v : v;
        u = u > v ? u : v;
        best = u > best ? u : best;
    }
    return best;
}

/* out = clip(round(w / 2**shift), +-limit) of w = t1[x's entry] + m[c] * g, rounded sign-magnitude with mode 0
 * (nearest, ties away from zero), 1 (pseudo-stochastic: the discarded bits' high half against their low half) or
 * 2 (truncate) or 4 / 5 (stochastic with one / two counter words per draw, see niti_bn_error_round); shift 0 only
 * clips.  The int8 result of numerics.rescale for these modes (stochastic: with the draw's bits as its noise). */
/* Channels per block of precomputed draws (the draws of a block are hashed in their own loop, which vectorises). */
#define NITI_BN_BLOCK 256

/* One row range of niti_bn_error_round with the mode a compile-time constant (inlined per mode below), so that the
 * inner loop carries no mode test.  The stochastic modes hash a block of channels' counter words first, in a loop of
 * uint32 arithmetic alone (vectorised), then round.  Mode 5 hashes the part-1 words only: they decide the rounding
 * unless their bits equal the discarded bits' high part (about one element in 2**(shift - 32)), and only those
 * elements hash their part-0 word, in a second loop (ResNet-20's 16-channel batch norm, 2 threads, shift 40:
 * 5.0 -> 4.0 ms). */
static inline void bn_error_round_rows(const int8_t *restrict g, const int8_t *restrict x,
                                       const int64_t *restrict t1, const int64_t *restrict m, long r0, long r1,
                                       long C, int shift, const int mode, int64_t limit, int8_t *restrict out,
                                       long start, const uint32_t *restrict keys) {
    uint64_t low_mask = shift ? ((uint64_t)1 << shift) - 1 : 0;
    int h = shift >> 1, odd = shift & 1;
    uint64_t h_mask = ((uint64_t)1 << h) - 1;
    uint64_t word_hi_mask = shift > 32 ? ((uint64_t)1 << (shift - 32)) - 1 : 0;
    uint32_t w0[NITI_BN_BLOCK], w1[NITI_BN_BLOCK];
    uint8_t tie[NITI_BN_BLOCK];
    for (long r = r0; r < r1; r++) {
        const int8_t *restrict gr = g + r * C, *restrict xr = x + r * C;
        int8_t *restrict orow = out + r * C;
        for (long c0 = 0; c0 < C; c0 += NITI_BN_BLOCK) {
            long c1 = c0 + NITI_BN_BLOCK < C ? c0 + NITI_BN_BLOCK : C;
            uint32_t base = (uint32_t)(start + r * C + c0);
            if (mode == 4)
                for (long j = 0; j < c1 - c0; j++) w0[j] = niti_counter_word(base + (uint32_t)j, keys[0], keys[1]);
            if (mode == 5)
                for (long j = 0; j < c1 - c0; j++) w1[j] = niti_counter_word(base + (uint32_t)j, keys[2], keys[3]);
            for (long c = c0; c < c1; c++) {
                int64_t w = t1[(xr[c] + 128) * C + c] + m[c] * gr[c];
                uint64_t a = (uint64_t)(w < 0 ? -w : w);
                uint64_t q = a;
                if (mode == 0) {
                    q = (a >> shift) + ((a >> (shift - 1)) & 1);
                } else if (mode == 1) {
                    uint64_t low = a & low_mask;
                    q = (a >> shift) + ((low >> h) > ((low & h_mask) << odd));
                } else if (mode == 2) {
                    q = a >> shift;
                } else if (mode == 4) { /* stochastic: up when the draw u in [0, 2**shift) is below the low bits */
                    uint64_t low = a & low_mask, u = w0[c - c0] & low_mask;
                    q = (a >> shift) + (u < low);
                } else if (mode == 5) { /* stochastic, shift > 32: u = (part-1 word's low bits << 32) | part-0 word */
                    uint64_t low = a & low_mask, lh = low >> 32, uh = w1[c - c0] & word_hi_mask;
                    q = (a >> shift) + (uh < lh); /* uh == lh (rare): the part-0 word decides, below */
                    tie[c - c0] = uh == lh;
                }
                int64_t s = q > (uint64_t)limit ? limit : (int64_t)q;
                orow[c] = (int8_t)(w < 0 ? -s : s);
            }
            if (mode == 5) /* the few ties of the high bits: hash the part-0 word and round those again */
                for (long c = c0; c < c1; c++) {
                    if (!tie[c - c0]) continue;
                    int64_t w = t1[(xr[c] + 128) * C + c] + m[c] * gr[c];
                    uint64_t a = (uint64_t)(w < 0 ? -w : w);
                    uint32_t u0 = niti_counter_word(base + (uint32_t)(c - c0), keys[0], keys[1]);
                    uint64_t q = (a >> shift) + (u0 < (uint32_t)(a & low_mask));
                    int64_t s = q > (uint64_t)limit ? limit : (int64_t)q;
                    orow[c] = (int8_t)(w < 0 ? -s : s);
                }
        }
    }
}

/* Mode 4 (stochastic, 1 <= shift <= 62): element (r, c)'s draw is the low `shift` bits of the counter words of index
 * i = start + r * C + c (counter_hash.h): bits 0..31 from keys[0], keys[1], bits 32.. from keys[2], keys[3] (the
 * draw's part 1). The other modes ignore start and keys (which may be NULL). */
void niti_bn_error_round(const int8_t *g, const int8_t *x, const int64_t *t1, const int64_t *m, long rows, long C,
                         int shift, int mode, int64_t limit, int8_t *out, long start, const uint32_t *keys, int nt) {
    int kind = shift ? mode : 3; /* 3: shift 0, clip only */
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        long r0 = rows * t / n, r1 = rows * (t + 1) / n;
        if (kind == 0) bn_error_round_rows(g, x, t1, m, r0, r1, C, shift, 0, limit, out, start, keys);
        else if (kind == 1) bn_error_round_rows(g, x, t1, m, r0, r1, C, shift, 1, limit, out, start, keys);
        else if (kind == 2) bn_error_round_rows(g, x, t1, m, r0, r1, C, shift, 2, limit, out, start, keys);
        else if (kind == 4 && shift <= 32) /* one word per draw */
            bn_error_round_rows(g, x, t1, m, r0, r1, C, shift, 4, limit, out, start, keys);
        else if (kind == 4) /* two words per draw: mode 5 */
            bn_error_round_rows(g, x, t1, m, r0, r1, C, shift, 5, limit, out, start, keys);
        else bn_error_round_rows(g, x, t1, m, r0, r1, C, shift, 3, limit, out, start, keys);
    }
}

/* niti_bn_error_round in 32-bit lanes, for the batch norm's own operands: multipliers m[c] = k[c] * 2**24 and a
 * shift of 24 to 49 bits.  With t1 = T * 2**24 + R (T = floor(t1 / 2**24), 0 <= R < 2**24) the value is
 * w = H * 2**24 + R, H = T + k * g, and its magnitude a = A * 2**24 + L with
 *   H >= 0: A = H, L = R;   H < 0: A = -H - 1, L = 2**24 - R (R > 0) or A = -H, L = 0 (R = 0),
 * so a >> shift = A >> d (d = shift - 24) and the discarded bits are (A mod 2**d) * 2**24 + L: every rounding of
 * niti_bn_error_round from uint32 arithmetic (twice the lanes, no 64-bit multiply).  The caller guarantees
 * |T| + |k| * 128 < 2**31 and 256 * C < 2**31.  Inputs: T (int32) and R (uint32) (256, C) tables, k (int32 (C,)). */
/* niti_bn_error_round in 32-bit lanes, for the batch norm's own operands: multipliers m[c] = k[c] * 2**24 and a
 * shift of 24 to 49 bits.  With t1 = T * 2**24 + R (T = floor(t1 / 2**24), 0 <= R < 2**24) the value is
 * w = H * 2**24 + R, H = T + k * g, and its magnitude a = A * 2**24 + L with
 *   H >= 0: A = H, L = R;   H < 0: A = -H - 1, L = 2**24 - R (R > 0) or A = -H, L = 0 (R = 0),
 * so a >> shift = A >> d (d = shift - 24) and the discarded bits are (A mod 2**d) * 2**24 + L: every rounding of
 * niti_bn_error_round from uint32 arithmetic (twice the lanes, no 64-bit multiply).  The caller guarantees
 * |T| + |k| * 128 < 2**31 and 256 * C < 2**31.  Inputs: T (int32) and R (uint32) (256, C) tables, k (int32 (C,)). */
/* The tied elements of one block [b0, b1) of bn_error_round32_range (mode 5), rounded again with their part-0 word.
 * A function of its own, kept scalar: vectorised (masked, every lane hashing) it would cost as much as the whole
 * rounding, for about one element in 2**(shift - 32). */
__attribute__((noinline, optimize("no-tree-vectorize"))) static void bn_round32_ties(
    const int8_t *restrict g, const int8_t *restrict x, const int32_t *restrict tt, const uint32_t *restrict rt,
    const int32_t *restrict k, long b0, long b1, long C, int d, uint32_t limit, int8_t *restrict out, long start,
    const uint32_t *restrict keys, const uint32_t *restrict tie) {
    const uint32_t d_mask = (uint32_t)(((uint64_t)1 << d) - 1);
    for (long i = b0; i < b1; i++) {
        if (!tie[i - b0]) continue;
        long c = i % C, e = (x[i] + 128) * C + c;
        int32_t hv = tt[e] + k[c] * g[i];
        uint32_t rv = rt[e], neg = hv < 0;
        uint32_t A = neg ? (uint32_t)(-(int64_t)hv) - (rv != 0) : (uint32_t)hv;
        uint32_t L = neg && rv ? ((uint32_t)1 << 24) - rv : rv;
        uint32_t q = (A >> d) + (niti_counter_word((uint32_t)(start + i), keys[0], keys[1]) <
                                 (((A & d_mask & 0xFF) << 24) | L));
        uint32_t sv = q > limit ? limit : q;
        out[i] = (int8_t)(neg ? -(int32_t)sv : (int32_t)sv);
    }
}

/* niti_bn_error_round in 32-bit lanes, for the batch norm's own operands: multipliers m[c] = k[c] * 2**24 and a
 * shift of 24 to 49 bits.  With t1 = T * 2**24 + R (T = floor(t1 / 2**24), 0 <= R < 2**24) the value is
 * w = H * 2**24 + R, H = T + k * g, and its magnitude a = A * 2**24 + L with
 *   H >= 0: A = H, L = R;   H < 0: A = -H - 1, L = 2**24 - R (R > 0) or A = -H, L = 0 (R = 0),
 * so a >> shift = A >> d (d = shift - 24) and the discarded bits are (A mod 2**d) * 2**24 + L: every rounding of
 * niti_bn_error_round from uint32 arithmetic (twice the lanes, no 64-bit multiply).  One flat loop over elements
 * [i0, i1) in blocks (channel c = i mod C, a mask: C is a power of two), so that narrow rows (ResNet's 16 channels)
 * still fill the vectors.  Mode 5 marks a tie of the part-1 bits with the discarded bits' high part (about one
 * element in 2**(shift - 32)) as -128 in the vector loop, and a scalar loop rounds those with their part-0 word.
 * The caller guarantees |T| + |k| * 128 < 2**31, 256 * C < 2**31 and limit <= 127 (-128 is never a result).
 * Inputs: T (int32) and R (uint32) (256, C) tables, k (int32 (C,)) (niti_bn_error_round32 makes them). */
static inline __attribute__((always_inline)) void bn_error_round32_range(
    const int8_t *restrict g, const int8_t *restrict x, const int32_t *restrict tt, const uint32_t *restrict rt,
    const int32_t *restrict k, long i0, long i1, long C, int shift, const int mode, uint32_t limit,
    int8_t *restrict out, long start, const uint32_t *restrict keys) {
    const int d = shift - 24, h = shift >> 1, odd = shift & 1;
    const uint32_t d_mask = (uint32_t)(((uint64_t)1 << d) - 1), h_mask = ((uint32_t)1 << h) - 1;
    const uint32_t s_mask = shift >= 32 ? 0xFFFFFFFFu : ((uint32_t)1 << shift) - 1; /* mode 4: shift <= 32 */
    const uint32_t word_hi_mask = shift > 32 ? ((uint32_t)1 << (shift - 32)) - 1 : 0;
    const int round_bit = d ? d - 1 : 0; /* nearest: bit shift - 1 of a, in A (d >= 1) or L (d = 0: bit 23) */
    const int ci = (int)C, cmask = ci - 1;
    uint32_t w0[NITI_BN_BLOCK], w1[NITI_BN_BLOCK];
    for (long b0 = i0; b0 < i1; b0 += NITI_BN_BLOCK) {
        long b1 = b0 + NITI_BN_BLOCK < i1 ? b0 + NITI_BN_BLOCK : i1;
        int n = (int)(b1 - b0), c0 = (int)(b0 % C);
        uint32_t base = (uint32_t)(start + b0);
        if (mode == 4)
            for (int j = 0; j < n; j++) w0[j] = niti_counter_word(base + (uint32_t)j, keys[0], keys[1]);
        if (mode == 5)
            for (int j = 0; j < n; j++) w1[j] = niti_counter_word(base + (uint32_t)j, keys[2], keys[3]);
        for (int j = 0; j < n; j++) {
            int c = (c0 + j) & cmask;
            int e = (x[b0 + j] + 128) * ci + c; /* int32 indices: the loads vectorise as gathers */
            int32_t hv = tt[e] + k[c] * g[b0 + j];
            uint32_t rv = rt[e], neg = hv < 0;
            uint32_t A = neg ? (uint32_t)(-(int64_t)hv) - (rv != 0) : (uint32_t)hv;
            uint32_t L = neg && rv ? ((uint32_t)1 << 24) - rv : rv;
            uint32_t Ad = A & d_mask, q = A >> d;
            if (mode == 0) {
                q += d ? (A >> round_bit) & 1 : (L >> 23) & 1;
            } else if (mode == 1) { /* the discarded s bits: high half (low >> h) against low half (h <= 24) */
                uint32_t hi = (Ad << (24 - h)) | (L >> h);
                q += hi > ((L & h_mask) << odd);
            } else if (mode == 4) { /* shift <= 32: the discarded bits fit 32 bits */
                q += (w0[j] & s_mask) < ((Ad << 24) | L);
            }
            uint32_t sv = q > limit ? limit : q;
            int8_t v = (int8_t)(neg ? -(int32_t)sv : (int32_t)sv);
            if (mode == 5) { /* shift > 32: the part-1 word's bits against the discarded bits' high part */
                uint32_t lh = Ad >> 8, uh = w1[j] & word_hi_mask;
                sv = q + (uh < lh);
                sv = sv > limit ? limit : sv;
                v = uh == lh ? (int8_t)-128 : (int8_t)(neg ? -(int32_t)sv : (int32_t)sv); /* -128: a tie, below */
            }
            out[b0 + j] = v;
        }
        if (mode == 5) /* the few ties (-128, never a result: limit <= 127): the part-0 word decides */
            for (int j = 0; j < n; j++) {
                if (out[b0 + j] != -128) continue;
                /* A compiler barrier: this loop stays scalar (vectorised, masked, every lane would hash). */
                __asm__ volatile("" ::: "memory");
                int c = (c0 + j) & cmask, e = (x[b0 + j] + 128) * ci + c;
                int32_t hv = tt[e] + k[c] * g[b0 + j];
                uint32_t rv = rt[e], neg = hv < 0;
                uint32_t A = neg ? (uint32_t)(-(int64_t)hv) - (rv != 0) : (uint32_t)hv;
                uint32_t L = neg && rv ? ((uint32_t)1 << 24) - rv : rv;
                uint32_t q = (A >> d) + (niti_counter_word(base + (uint32_t)j, keys[0], keys[1]) <
                                         (((A & d_mask & 0xFF) << 24) | L));
                uint32_t sv = q > limit ? limit : q;
                out[b0 + j] = (int8_t)(neg ? -(int32_t)sv : (int32_t)sv);
            }
    }
}

/* niti_bn_error_round's result through bn_error_round32_range where it applies: returns 0 when it wrote `out`, 1
 * when it declined (the caller takes niti_bn_error_round): a shift outside 24..49, a limit above 127, C not a power of
 * two (or 256 * C >= 2**31), a multiplier not a multiple of 2**24, |t1 >> 24| + |m >> 24| * 128 >= 2**31, or no
 * scratch memory.  It splits the tables itself (no pass over the elements), so deciding costs the caller nothing. */
int niti_bn_error_round32(const int8_t *g, const int8_t *x, const int64_t *t1, const int64_t *m, long rows, long C,
                          int shift, int mode, int64_t limit, int8_t *out, long start, const uint32_t *keys, int nt) {
    if (shift < 24 || shift > 49 || limit > 127 || limit < 0 || C < 1 || (C & (C - 1)) || C >= (1L << 23)) return 1;
    int64_t kmax = 0, tmax = 0;
    for (long c = 0; c < C; c++) {
        if (m[c] & ((1 << 24) - 1)) return 1;
        int64_t k = m[c] >> 24;
        k = k < 0 ? -k : k;
        kmax = k > kmax ? k : kmax;
    }
    for (long b = 0; b < 256 * C; b++) {
        int64_t t = t1[b] >> 24; /* arithmetic: floor */
        t = t < 0 ? -t : t;
        tmax = t > tmax ? t : tmax;
    }
    if (kmax >= (1L << 23) || tmax + kmax * 128 >= ((int64_t)1 << 31)) return 1;
    int32_t *tt = (int32_t *)malloc(sizeof(int32_t) * (256 * C + C));
    uint32_t *rt = (uint32_t *)malloc(sizeof(uint32_t) * 256 * C);
    if (!tt || !rt) {
        free(tt);
        free(rt);
        return 1;
    }
    int32_t *k = tt + 256 * C;
    for (long b = 0; b < 256 * C; b++) {
        tt[b] = (int32_t)(t1[b] >> 24);
        rt[b] = (uint32_t)(t1[b] & ((1 << 24) - 1));
    }
    for (long c = 0; c < C; c++) k[c] = (int32_t)(m[c] >> 24);
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        long i0 = rows * t / n * C, i1 = rows * (t + 1) / n * C; /* whole rows each */
        uint32_t lim = (uint32_t)limit;
        if (mode == 0) bn_error_round32_range(g, x, tt, rt, k, i0, i1, C, shift, 0, lim, out, start, keys);
        else if (mode == 1) bn_error_round32_range(g, x, tt, rt, k, i0, i1, C, shift, 1, lim, out, start, keys);
        else if (mode == 2) bn_error_round32_range(g, x, tt, rt, k, i0, i1, C, shift, 2, lim, out, start, keys);
        else if (mode == 4 && shift <= 32)
            bn_error_round32_range(g, x, tt, rt, k, i0, i1, C, shift, 4, lim, out, start, keys);
        else bn_error_round32_range(g, x, tt, rt, k, i0, i1, C, shift, 5, lim, out, start, keys);
    }
    free(tt);
    free(rt);
    return 0;
}

/* out[(x + 128) * C + c] = sum of g (or the count, g NULL) over the elements of channel c with input value x: exact
 * int64 sums, one private (256, C) histogram per thread.  With lo and hi (int8 (256, C), g given) also the smallest
 * and largest g of each entry (lo 127 > hi -128 where no element has it).  Returns 1 when a scratch allocation
 * failed. */
int niti_bn_value_sums(const int8_t *restrict g, const int8_t *restrict x, long rows, long C, int64_t *restrict out,
                       int8_t *restrict lo, int8_t *restrict hi, int nt) {
    int failed = 0;
    long bins = 256 * C;
    int ranges = g && lo && hi;
    memset(out, 0, sizeof(int64_t) * bins);
    if (ranges) {
        memset(lo, 127, bins);
        memset(hi, -128, bins);
    }
#pragma omp parallel num_threads(nt)
    {
        int64_t *restrict hist = (int64_t *)calloc(bins, sizeof(int64_t));
        int8_t *restrict tlo = ranges ? (int8_t *)malloc(bins) : NULL, *restrict thi = ranges ? (int8_t *)malloc(bins) : NULL;
        int ok = hist && (!ranges || (tlo && thi));
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        } else if (ranges) {
            memset(tlo, 127, bins);
            memset(thi, -128, bins);
        }
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            const int8_t *restrict xr = x + r * C;
            if (!ok) continue;
            if (ranges) {
                const int8_t *restrict gr = g + r * C;
                for (long c = 0; c < C; c++) {
                    long b = (xr[c] + 128) * C + c;
                    int8_t v = gr[c];
                    hist[b] += v;
                    tlo[b] = v < tlo[b] ? v : tlo[b];
                    thi[b] = v > thi[b] ? v : thi[b];
                }
            } else if (g) {
                const int8_t *restrict gr = g + r * C;
                for (long c = 0; c < C; c++) hist[(xr[c] + 128) * C + c] += gr[c];
            } else {
                for (long c = 0; c < C; c++) hist[(xr[c] + 128) * C + c] += 1;
            }
        }
        if (ok) {
#pragma omp critical
            {
                for (long b = 0; b < bins; b++) out[b] += hist[b];
                if (ranges)
                    for (long b = 0; b < bins; b++) {
                        lo[b] = tlo[b] < lo[b] ? tlo[b] : lo[b];
                        hi[b] = thi[b] > hi[b] ? thi[b] : hi[b];
                    }
            }
        }
        free(hist);
        free(tlo);
        free(thi);
    }
    return failed;
}

/* out = table[x's entry] for an int8 (256, C) table. */
void niti_bn_gather_int8(const int8_t *restrict table, const int8_t *restrict x, long rows, long C,
                         int8_t *restrict out, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long r = 0; r < rows; r++) {
        const int8_t *restrict xr = x + r * C;
        int8_t *restrict orow = out + r * C;
        for (long c = 0; c < C; c++) orow[c] = table[(xr[c] + 128) * C + c];
    }
}
