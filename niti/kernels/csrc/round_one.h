/* One element of the rescale's rounding to int8 (docs/numerics.md sections 2-3), shared by the C passes that narrow
 * an int32 value (round_clip.c: a stored accumulator; add_shifted.c: an aligned sum formed in the loop).
 *
 * out = sign(v) * min(round(|v| / 2**shift), limit), sign-magnitude, with mode 0 (nearest, ties away from zero),
 * 1 (pseudo-stochastic: the discarded bits' high half against their low half, the low half doubled when shift is
 * odd), 2 (truncate), 3 (shift 0: clip only) or 4 (stochastic: up when the draw u, masked to the low `shift` bits,
 * is below the discarded bits).  The caller guarantees |v| < 2**31, so |v| fits uint32 and nothing wraps.  The
 * mode is a compile-time constant where the callers inline this, so their loops carry no mode test and vectorise.
 */
#ifndef NITI_ROUND_ONE_H
#define NITI_ROUND_ONE_H
#include <stdint.h>

/* A rounding's per-pass constants (computed once, outside the loops). */
typedef struct {
    int shift, s1, h, odd;
    uint32_t low_mask, h_mask, limit;
} niti_round_consts;

static inline niti_round_consts niti_round_setup(int shift, uint32_t limit) {
    niti_round_consts k;
    k.shift = shift;
    k.s1 = shift ? shift - 1 : 0;
    k.h = shift >> 1;
    k.odd = shift & 1;
    k.low_mask = shift ? (uint32_t)(((uint64_t)1 << shift) - 1) : 0;
    k.h_mask = ((uint32_t)1 << k.h) - 1;
    k.limit = limit;
    return k;
}

static inline int8_t niti_round_one(int32_t v, const niti_round_consts k, const int mode, uint32_t u) {
    uint32_t a = (uint32_t)(v < 0 ? -(int64_t)v : v);
    uint32_t q = a;
    if (mode == 0) {
        q = (a >> k.shift) + ((a >> k.s1) & 1);
    } else if (mode == 1) {
        uint32_t low = a & k.low_mask;
        q = (a >> k.shift) + ((low >> k.h) > ((low & k.h_mask) << k.odd));
    } else if (mode == 2) {
        q = a >> k.shift;
    } else if (mode == 4) {
        q = (a >> k.shift) + ((u & k.low_mask) < (a & k.low_mask));
    }
    int32_t s = (int32_t)(q > k.limit ? k.limit : q);
    return (int8_t)(v < 0 ? -s : s);
}
#endif
