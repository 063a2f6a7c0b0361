/* The rescale's rounding pass for the CPU: int32 in, int8 out (docs/numerics.md sections 2-3;
 * niti.kernels.cpu_round, pinned against numerics.round_shift).
 *
 * out = sign(x) * min(round(|x| / 2**shift), limit) with mode 0 (nearest), 1 (pseudo-stochastic) or 2 (truncate);
 * shift 0 only clips (round_one.h has the element).  The caller guarantees |x| < 2**31 (bit width <= 31).  The mode
 * is a compile-time constant of each inlined loop and the pointers are `restrict`, so the loops vectorise.
 *
 * Stochastic rounding (niti_round_clip_stochastic_i32_i8) rounds up when u < the discarded bits, u the low `shift`
 * bits of element i's counter-based word of index start + i (section 14): the word is computed in the
 * loop, so no draw tensor is written or read (counter_hash.h).
 */
#include <omp.h>
#include <stdint.h>

#include "counter_hash.h"
#include "isa.h"
#include "round_one.h"

/* Both loops have an AVX-512 build chosen at run time (isa.h): 2.9 M elements on one core, nearest 1.19 -> 0.94 ms,
 * pseudo-stochastic 1.66 -> 1.48 ms, stochastic 3.31 -> 1.96 ms. */
int niti_round_avx512 = -1;

static inline void round_clip_range(const int32_t *restrict x, long lo, long hi, const niti_round_consts k,
                                    const int mode, int8_t *restrict out) {
    for (long i = lo; i < hi; i++) out[i] = niti_round_one(x[i], k, mode, 0);
}

/* One thread's range in the mode m (3: shift 0, clip only), as constants of the inlined loops. */
#define NITI_ROUND_MODES(NAME, ATTR)                                                                                \
    static ATTR __attribute__((noinline)) void NAME(const int32_t *restrict x, long lo, long hi,                   \
                                                    const niti_round_consts k, int m, int8_t *restrict out) {     \
        if (m == 0) round_clip_range(x, lo, hi, k, 0, out);                                                        \
        else if (m == 1) round_clip_range(x, lo, hi, k, 1, out);                                                   \
        else if (m == 2) round_clip_range(x, lo, hi, k, 2, out);                                                   \
        else round_clip_range(x, lo, hi, k, 3, out);                                                               \
    }
NITI_ROUND_MODES(round_clip_modes, )
NITI_ROUND_MODES(round_clip_modes512, NITI_AVX512)

void niti_round_clip_i32_i8(const int32_t *restrict x, long n, int shift, int mode, int32_t limit,
                            int8_t *restrict out, int nt) {
    int m = shift ? mode : 3; /* 3: shift 0, clip only */
    const niti_round_consts k = niti_round_setup(shift, (uint32_t)limit);
    if (n < (1L << 16)) nt = 1; /* below ~64 K elements a parallel region costs more than it saves */
    int wide = niti_use_avx512(&niti_round_avx512);
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), nth = omp_get_num_threads();
        long lo = n * t / nth, hi = n * (t + 1) / nth;
        if (wide) round_clip_modes512(x, lo, hi, k, m, out);
        else round_clip_modes(x, lo, hi, k, m, out);
    }
}

#define NITI_ROUND_STOCHASTIC(NAME, ATTR)                                                                           \
    static ATTR __attribute__((noinline)) void NAME(const int32_t *restrict x, long lo, long hi,                   \
                                                    const niti_round_consts k, long start, uint32_t k1,            \
                                                    uint32_t k2, int8_t *restrict out) {                           \
        for (long i = lo; i < hi; i++)                                                                             \
            out[i] = niti_round_one(x[i], k, 4, niti_counter_word((uint32_t)(start + i), k1, k2));                 \
    }
NITI_ROUND_STOCHASTIC(round_clip_stochastic_range, )
NITI_ROUND_STOCHASTIC(round_clip_stochastic_range512, NITI_AVX512)

/* 1 <= shift <= 24 (so shift + 7 <= 31 and the draw is one word's low bits); start + n <= 2**32. */
void niti_round_clip_stochastic_i32_i8(const int32_t *restrict x, long n, int shift, int32_t limit, long start,
                                       uint32_t k1, uint32_t k2, int8_t *restrict out, int nt) {
    const niti_round_consts k = niti_round_setup(shift, (uint32_t)limit);
    if (n < (1L << 16)) nt = 1;
    int wide = niti_use_avx512(&niti_round_avx512);
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), nth = omp_get_num_threads();
        long lo = n * t / nth, hi = n * (t + 1) / nth;
        if (wide) round_clip_stochastic_range512(x, lo, hi, k, start, k1, k2, out);
        else round_clip_stochastic_range(x, lo, hi, k, start, k1, k2, out);
    }
}
