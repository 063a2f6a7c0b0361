/* Batch norm's per-element passes over (value, channel) tables (docs/numerics.md section 13), for the CPU.
 *
 * Rows of C channels; (x + 128) * C + c is an element's entry in a (256, C) table of its int8 input value x.  An
 * element's error term is its int8 error value g times its channel's multiplier m[c].  Integer instructions only; every sum is exact (int64) and
 * independent of the order and of the thread count.  Pointers are `restrict` (the caller passes distinct tensors):
 * without it every int8 store may alias the tables, and the loops reload instead of vectorising (3x slower).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "counter_hash.h"

/* The largest |t1[e] + m[c] * g| over the elements, from the smallest and largest g per entry e of the (R, C) table
 * t1 (lo and hi of niti_bn_value_sums: R = 256, an entry per (value, channel), or R = 3, one per (sign class,
 * channel); lo > hi: no element): |t + m g| is convex in g, so an entry's largest value is at one of its two ends.
 * The caller guarantees |t1| + |m| * 128 < 2**62. */
int64_t niti_bn_range_max(const int64_t *restrict t1, const int64_t *restrict m, const int8_t *restrict lo,
                          const int8_t *restrict hi, long R, long C) {
    int64_t best = 0;
    for (long b = 0; b < R * C; b++) {
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
 * niti_bn_error_round from uint32 arithmetic (twice the lanes, no 64-bit multiply).
 *
 * An element's T and R come from one of two table forms (`signs`, a compile-time constant of each build):
 *   0: its (value, channel) entry of (256, C) tables, gathered (the loads vectorise as gathers);
 *   1: batch norm's backward table, whose entry depends on the value x only through the sign of n x - s
 *      (docs/numerics.md section 13): three rows (sign -1, 0, +1) and per channel the thresholds P (sign +1 iff
 *      x > P) and Q (sign -1 iff x < Q), selected by masks.  Every operand is then a contiguous load of a channel
 *      array expanded to the block (length L = max(256, C), channel (c0 + j) mod C at index c0 + j), no gather. */
typedef struct {
    const int32_t *tt; /* signs 0: T (256, C); signs 1: T rows for sign -1, 0, +1, each of length L */
    const uint32_t *rt;
    const int32_t *k;  /* signs 0: (C,); signs 1: expanded, L */
    const int32_t *p, *q; /* signs 1: thresholds, expanded, L */
    long L;
} bn_entries32;

/* An element's H = T + k g (hv) and R (rv) from either table form (`signs`), inline in the loops: as a function
 * returning through pointers the gathering loop ran 4.5x slower (GCC vectorised it differently). */
#define NITI_BN_ENTRY32(hv, rv, j)                                                                                   \
    do {                                                                                                             \
        if (signs) {                                                                                                 \
            int32_t xi_ = x[b0 + (j)], cj_ = c0 + (j);                                                               \
            int32_t mp_ = -(int32_t)(xi_ > p[cj_]), mn_ = -(int32_t)(xi_ < q[cj_]), mz_ = ~(mp_ | mn_);              \
            hv = ((tt[cj_] & mn_) | (tt[L + cj_] & mz_) | (tt[2 * L + cj_] & mp_)) + k[cj_] * g[b0 + (j)];            \
            rv = (rt[cj_] & (uint32_t)mn_) | (rt[L + cj_] & (uint32_t)mz_) | (rt[2 * L + cj_] & (uint32_t)mp_);      \
        } else {                                                                                                     \
            int c_ = (c0 + (j)) & cmask, e_ = (x[b0 + (j)] + 128) * ci + c_; /* int32: vectorised gathers */         \
            hv = tt[e_] + k[c_] * g[b0 + (j)];                                                                       \
            rv = rt[e_];                                                                                             \
        }                                                                                                            \
    } while (0)

/* One flat range of elements [i0, i1) (whole rows) in blocks (channel c = i mod C, a mask: C is a power of two), so
 * that narrow rows (ResNet's 16 channels) still fill the vectors.  Mode 5 marks a tie of the part-1 bits with the
 * discarded bits' high part (about one element in 2**(shift - 32)) as -128 in the vector loop, and a scalar loop
 * rounds those with their part-0 word.  The caller guarantees |T| + |k| * 128 < 2**31, 256 * C < 2**31 and
 * limit <= 127 (-128 is never a result). */
static inline __attribute__((always_inline)) void bn_error_round32_range(
    const int8_t *restrict g, const int8_t *restrict x, const int signs, const bn_entries32 *e, long i0, long i1,
    long C, int shift, const int mode, uint32_t limit, int8_t *restrict out, long start,
    const uint32_t *restrict keys) {
    const int d = shift - 24, h = shift >> 1, odd = shift & 1;
    const uint32_t d_mask = (uint32_t)(((uint64_t)1 << d) - 1), h_mask = ((uint32_t)1 << h) - 1;
    const uint32_t s_mask = shift >= 32 ? 0xFFFFFFFFu : ((uint32_t)1 << shift) - 1; /* mode 4: shift <= 32 */
    const uint32_t word_hi_mask = shift > 32 ? ((uint32_t)1 << (shift - 32)) - 1 : 0;
    const int round_bit = d ? d - 1 : 0; /* nearest: bit shift - 1 of a, in A (d >= 1) or L (d = 0: bit 23) */
    const int ci = (int)C, cmask = ci - 1;
    /* The tables in restrict locals: read through the struct, every int8 store may alias them (no vectorising). */
    const int32_t *restrict tt = e->tt, *restrict k = e->k, *restrict p = e->p, *restrict q = e->q;
    const uint32_t *restrict rt = e->rt;
    const long L = e->L;
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
            int32_t hv;
            uint32_t rv;
            NITI_BN_ENTRY32(hv, rv, j);
            uint32_t neg = hv < 0;
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
            for (int j0 = 0; j0 < n; j0 += 32) {
                /* Found 32 bytes at a time (a byte compare and its mask), then one tie after another: a scalar scan
                 * of every byte cost a quarter of the loop (ResNet-20's 16 channels, shift 39, one thread: 4.3 -> 3.2
                 * ms for 2**21 elements). */
                uint32_t ties = 0;
                if (j0 + 32 <= n)
                    ties = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(
                        _mm256_loadu_si256((const __m256i *)(out + b0 + j0)), _mm256_set1_epi8(-128)));
                else
                    for (int j = j0; j < n; j++) ties |= (uint32_t)(out[b0 + j] == -128) << (j - j0);
                for (; ties; ties &= ties - 1) {
                    int j = j0 + __builtin_ctz(ties);
                    int32_t hv;
                    uint32_t rv;
                    NITI_BN_ENTRY32(hv, rv, j);
                    uint32_t neg = hv < 0;
                    uint32_t A = neg ? (uint32_t)(-(int64_t)hv) - (rv != 0) : (uint32_t)hv;
                    uint32_t L = neg && rv ? ((uint32_t)1 << 24) - rv : rv;
                    uint32_t q = (A >> d) + (niti_counter_word(base + (uint32_t)j, keys[0], keys[1]) <
                                             (((A & d_mask & 0xFF) << 24) | L));
                    uint32_t sv = q > limit ? limit : q;
                    out[b0 + j] = (int8_t)(neg ? -(int32_t)sv : (int32_t)sv);
                }
            }
    }
}

/* Whether the 32-bit loop applies to these operands (0: it does): a shift of 24..49, a limit of 0..127, C a power of
 * two below 2**23, multipliers that are multiples of 2**24 and |t1 >> 24| + |m >> 24| * 128 < 2**31 over the
 * `entries` table entries t1. */
static int bn_round32_declines(const int64_t *t1, long entries, const int64_t *m, long C, int shift, int64_t limit) {
    if (shift < 24 || shift > 49 || limit > 127 || limit < 0 || C < 1 || (C & (C - 1)) || C >= (1L << 23)) return 1;
    int64_t kmax = 0, tmax = 0;
    for (long c = 0; c < C; c++) {
        if (m[c] & ((1 << 24) - 1)) return 1;
        int64_t k = m[c] >> 24;
        k = k < 0 ? -k : k;
        kmax = k > kmax ? k : kmax;
    }
    for (long b = 0; b < entries; b++) {
        int64_t t = t1[b] >> 24; /* arithmetic: floor */
        t = t < 0 ? -t : t;
        tmax = t > tmax ? t : tmax;
    }
    return kmax >= (1L << 23) || tmax + kmax * 128 >= ((int64_t)1 << 31);
}

/* The 32-bit loop over every row, its threads each taking whole rows. */
static void bn_round32_run(const int8_t *g, const int8_t *x, const int signs, const bn_entries32 *e, long rows,
                           long C, int shift, int mode, int64_t limit, int8_t *out, long start,
                           const uint32_t *keys, int nt) {
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        long i0 = rows * t / n * C, i1 = rows * (t + 1) / n * C; /* whole rows each */
        uint32_t lim = (uint32_t)limit;
#define NITI_BN_RUN(S)                                                                                               \
    do {                                                                                                             \
        if (mode == 0) bn_error_round32_range(g, x, S, e, i0, i1, C, shift, 0, lim, out, start, keys);               \
        else if (mode == 1) bn_error_round32_range(g, x, S, e, i0, i1, C, shift, 1, lim, out, start, keys);          \
        else if (mode == 2) bn_error_round32_range(g, x, S, e, i0, i1, C, shift, 2, lim, out, start, keys);          \
        else if (mode == 4 && shift <= 32) bn_error_round32_range(g, x, S, e, i0, i1, C, shift, 4, lim, out, start,  \
                                                                  keys);                                             \
        else bn_error_round32_range(g, x, S, e, i0, i1, C, shift, 5, lim, out, start, keys);                         \
    } while (0)
        if (signs) NITI_BN_RUN(1);
        else NITI_BN_RUN(0);
#undef NITI_BN_RUN
    }
}

/* niti_bn_error_round's result through the 32-bit loop where it applies (bn_round32_declines): returns 0 when it
 * wrote `out`, 1 when it declined (the caller takes niti_bn_error_round) or had no scratch memory.  It splits the
 * table itself (no pass over the elements), so deciding costs the caller nothing. */
int niti_bn_error_round32(const int8_t *g, const int8_t *x, const int64_t *t1, const int64_t *m, long rows, long C,
                          int shift, int mode, int64_t limit, int8_t *out, long start, const uint32_t *keys, int nt) {
    if (bn_round32_declines(t1, 256 * C, m, C, shift, limit)) return 1;
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
    bn_entries32 e = {tt, rt, k, NULL, NULL, 0};
    bn_round32_run(g, x, 0, &e, rows, C, shift, mode, limit, out, start, keys, nt);
    free(tt);
    free(rt);
    return 0;
}

/* niti_bn_error_round32 for batch norm's backward table given as its three sign rows t3 (3, C: the entries of
 * sign -1, 0, +1) and per-channel thresholds p, q (int32: an element's sign is +1 where x > p, -1 where x < q, else
 * 0): the same bits as niti_bn_error_round32 on the (256, C) table those describe, without a gather (measured in
 * cpu_bn.error_round_signs).  Returns 1 where that would decline. */
int niti_bn_error_round32_signs(const int8_t *g, const int8_t *x, const int64_t *t3, const int32_t *p,
                                const int32_t *q, const int64_t *m, long rows, long C, int shift, int mode,
                                int64_t limit, int8_t *out, long start, const uint32_t *keys, int nt) {
    if (bn_round32_declines(t3, 3 * C, m, C, shift, limit)) return 1;
    long L = C > NITI_BN_BLOCK ? C : NITI_BN_BLOCK; /* C a power of two: C divides L */
    int32_t *buf = (int32_t *)malloc(sizeof(int32_t) * 6 * L);
    uint32_t *rt = (uint32_t *)malloc(sizeof(uint32_t) * 3 * L);
    if (!buf || !rt) {
        free(buf);
        free(rt);
        return 1;
    }
    int32_t *tt = buf, *k = buf + 3 * L, *pe = buf + 4 * L, *qe = buf + 5 * L;
    for (long j = 0; j < L; j++) {
        long c = j & (C - 1);
        for (int s = 0; s < 3; s++) {
            tt[s * L + j] = (int32_t)(t3[s * C + c] >> 24);
            rt[s * L + j] = (uint32_t)(t3[s * C + c] & ((1 << 24) - 1));
        }
        k[j] = (int32_t)(m[c] >> 24);
        pe[j] = p[c];
        qe[j] = q[c];
    }
    bn_entries32 e = {tt, rt, k, pe, qe, L};
    bn_round32_run(g, x, 1, &e, rows, C, shift, mode, limit, out, start, keys, nt);
    free(buf);
    free(rt);
    return 0;
}

/* One row's smallest and largest g per sign class (lo0/hi0: x < below, lo2/hi2: x > above, lo1/hi1: the rest) into
 * running minima and maxima: masks, no scatter (vectorised; one pointer per class, as parameters, so that GCC knows
 * they do not alias). */
static inline void bn_class_ranges(const int8_t *restrict xr, const int8_t *restrict gr, const int32_t *restrict above,
                                   const int32_t *restrict below, long C, int8_t *restrict lo0, int8_t *restrict lo1,
                                   int8_t *restrict lo2, int8_t *restrict hi0, int8_t *restrict hi1,
                                   int8_t *restrict hi2) {
    for (long c = 0; c < C; c++) {
        int32_t xi = xr[c];
        int8_t v = gr[c], neg = xi < below[c], pos = xi > above[c], mid = !(neg | pos);
        int8_t vn = neg ? v : 127, vm = mid ? v : 127, vp = pos ? v : 127;
        lo0[c] = vn < lo0[c] ? vn : lo0[c];
        lo1[c] = vm < lo1[c] ? vm : lo1[c];
        lo2[c] = vp < lo2[c] ? vp : lo2[c];
        vn = neg ? v : -128, vm = mid ? v : -128, vp = pos ? v : -128;
        hi0[c] = vn > hi0[c] ? vn : hi0[c];
        hi1[c] = vm > hi1[c] ? vm : hi1[c];
        hi2[c] = vp > hi2[c] ? vp : hi2[c];
    }
}

/* out[(x + 128) * C + c] = sum of g (or the count, g NULL) over the elements of channel c with input value x: exact
 * int64 sums, one private (256, C) histogram per thread.  With lo and hi (int8, g given) also the smallest and
 * largest g of each entry (lo 127 > hi -128 where no element has it): per (value, channel), (256, C), or with the
 * thresholds above and below (int32 (C,)) per (sign class, channel), (3, C): class 0 where x < below, 2 where
 * x > above, else 1 (batch norm's backward, whose error term depends on x only through that sign).  The classes' lo
 * and hi are kept in a loop of its own over the row (vectorised: masks, no scatter), leaving one read-modify-write
 * per element where the per-value ranges take three.  Returns 1 when a scratch allocation failed. */
int niti_bn_value_sums(const int8_t *restrict g, const int8_t *restrict x, long rows, long C, int64_t *restrict out,
                       int8_t *restrict lo, int8_t *restrict hi, const int32_t *restrict above,
                       const int32_t *restrict below, int nt) {
    int failed = 0;
    long bins = 256 * C;
    int ranges = g && lo && hi, classes = ranges && above && below;
    long rbins = classes ? 3 * C : bins;
    memset(out, 0, sizeof(int64_t) * bins);
    if (ranges) {
        memset(lo, 127, rbins);
        memset(hi, -128, rbins);
    }
#pragma omp parallel num_threads(nt)
    {
        int64_t *restrict hist = (int64_t *)calloc(bins, sizeof(int64_t));
        int8_t *restrict tlo = ranges ? (int8_t *)malloc(rbins) : NULL, *restrict thi = ranges ? (int8_t *)malloc(rbins) : NULL;
        int ok = hist && (!ranges || (tlo && thi));
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        } else if (ranges) {
            memset(tlo, 127, rbins);
            memset(thi, -128, rbins);
        }
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            const int8_t *restrict xr = x + r * C;
            if (!ok) continue;
            if (classes) {
                const int8_t *restrict gr = g + r * C;
                for (long c = 0; c < C; c++) hist[(xr[c] + 128) * C + c] += gr[c];
                bn_class_ranges(xr, gr, above, below, C, tlo, tlo + C, tlo + 2 * C, thi, thi + C, thi + 2 * C);
            } else if (ranges) {
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
                    for (long b = 0; b < rbins; b++) {
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
