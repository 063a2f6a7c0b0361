/* The fused chains of niti.kernels.fused as C loops for the CPU (niti.kernels.cpu_chains): the ReLU backward, the
 * stride-1 col2im, the momentum-SGD update (docs/numerics.md sections 4-5) and the clip's magnitude counts (section
 * 2).  The chains' eager twins are the reference and the fallback, and the tests pin these loops against them bit for
 * bit.  With these (and the other csrc loops) a training step on an AVX2 CPU compiles nothing at run time, so a fresh
 * process starts at once.
 *
 * Integer instructions only.  Every element is independent (col2im: every image), so the thread count cannot change
 * a bit.  Pointers are `restrict`: the caller passes distinct tensors.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "isa.h"

int niti_chains_avx512 = -1; /* the AVX-512 builds' switch (isa.h) */

/* Below this many elements a parallel region costs more than it saves. */
#define NITI_SMALL (1L << 16)

/* out = err where y > 0, else 0 (int8). */
void niti_relu_backward_i8(const int8_t *restrict err, const int8_t *restrict y, long n, int8_t *restrict out,
                           int nt) {
    if (n < NITI_SMALL) nt = 1;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long i = 0; i < n; i++) out[i] = (int8_t)(err[i] & -(y[i] > 0)); /* a mask, not a branch: it vectorises */
}

/* out[j] = how many of x's n int32 values have |x| >= t[j], j < 4 (the share-bounded clip's counts, docs/numerics.md
 * section 2).  Magnitudes as uint32, so |-2**31| = 2**31 is exact; a threshold past 2**31 counts nothing.  Counts are
 * sums, the same for any thread count. */
void niti_count_at_least_i32(const int32_t *restrict x, long n, const uint32_t *restrict t, int64_t *restrict out,
                             int nt) {
    const uint32_t t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3];
    int64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    if (n < NITI_SMALL) nt = 1;
#pragma omp parallel for schedule(static) num_threads(nt) reduction(+ : c0, c1, c2, c3)
    for (long i = 0; i < n; i++) {
        int32_t v = x[i];
        uint32_t a = v < 0 ? (uint32_t)0 - (uint32_t)v : (uint32_t)v;
        c0 += a >= t0;
        c1 += a >= t1;
        c2 += a >= t2;
        c3 += a >= t3;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* The largest magnitude among x's n int32 values, as uint32 (|-2**31| = 2**31 is exact): the rescale's bit width
 * (docs/numerics.md section 2).  A maximum is the same for any thread count.  AVX-512 build at run time (isa.h). */
#define NITI_MAX_ABS(NAME, ATTR)                                                                                    \
    static ATTR __attribute__((noinline)) uint32_t NAME(const int32_t *restrict x, long lo, long hi) {            \
        uint32_t m = 0;                                                                                            \
        for (long i = lo; i < hi; i++) {                                                                           \
            int32_t v = x[i];                                                                                      \
            uint32_t a = v < 0 ? (uint32_t)0 - (uint32_t)v : (uint32_t)v;                                         \
            m = a > m ? a : m;                                                                                     \
        }                                                                                                          \
        return m;                                                                                                  \
    }
NITI_MAX_ABS(max_abs_range, )
NITI_MAX_ABS(max_abs_range512, NITI_AVX512)

uint32_t niti_max_abs_i32(const int32_t *restrict x, long n, int nt) {
    uint32_t m = 0;
    int wide = niti_use_avx512(&niti_chains_avx512);
    if (n < NITI_SMALL) nt = 1;
#pragma omp parallel num_threads(nt) reduction(max : m)
    {
        int t = omp_get_thread_num(), nth = omp_get_num_threads();
        long lo = n * t / nth, hi = n * (t + 1) / nth;
        m = wide ? max_abs_range512(x, lo, hi) : max_abs_range(x, lo, hi);
    }
    return m;
}

/* Stride-1 col2im: cols (n, ho, wo, kh, kw, c) int32, out (n, h, w, c) with h = ho + kh - 1 - 2 ph and
 * w = wo + kw - 1 - 2 pw: out[b, y, x] = sum over taps (i, j) of cols[b, y - i + ph, x - j + pw, i, j] where that
 * output exists.  The sums wrap mod 2**32 like the chain's int32 adds (the caller's bound keeps them exact). */
void niti_col2im_i32(const int32_t *restrict cols, long n, long ho, long wo, int kh, int kw, long c, int ph, int pw,
                     int32_t *restrict out, int nt) {
    long h = ho + kh - 1 - 2 * ph, w = wo + kw - 1 - 2 * pw;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long b = 0; b < n; b++) {
        uint32_t *restrict o = (uint32_t *)out + b * h * w * c;
        memset(o, 0, sizeof(uint32_t) * h * w * c);
        for (long oy = 0; oy < ho; oy++) {
            for (long ox = 0; ox < wo; ox++) {
                const uint32_t *restrict src = (const uint32_t *)cols + ((b * ho + oy) * wo + ox) * kh * kw * c;
                for (int i = 0; i < kh; i++) {
                    long iy = oy + i - ph;
                    if (iy < 0 || iy >= h) continue;
                    for (int j = 0; j < kw; j++) {
                        long ix = ox + j - pw;
                        if (ix < 0 || ix >= w) continue;
                        const uint32_t *restrict s = src + (i * kw + j) * c;
                        uint32_t *restrict d = o + (iy * w + ix) * c;
                        for (long ch = 0; ch < c; ch++) d[ch] += s[ch];
                    }
                }
            }
        }
    }
}

/* numerics.round_shift of t by s >= 0 bits (0: t itself), sign-magnitude: mode 0 nearest (ties away from zero), 1
 * pseudo-stochastic, 2 truncate, 4 stochastic (up when the draw, in [0, 2**s), is below the discarded bits). */
static inline int64_t round_shift(int64_t t, int s, const int mode, int64_t draw) {
    /* No branch on s == 0 (the discarded bits are then 0 and every mode adds 0), so the update's loop vectorises;
     * nearest reads bit s - 1 as bit s of 2a (exact for s <= 62, and no shift by -1). */
    uint64_t a = (uint64_t)(t < 0 ? -t : t), q = a >> s, low = a & (((uint64_t)1 << s) - 1);
    if (mode == 0) {
        q += ((a << 1) >> s) & 1;
    } else if (mode == 1) {
        int h = s >> 1;
        q += (low >> h) > ((low & (((uint64_t)1 << h) - 1)) << (s & 1));
    } else if (mode == 4) {
        q += (uint64_t)draw < low;
    }
    return t < 0 ? -(int64_t)q : (int64_t)q;
}

static inline int64_t clamp(int64_t x, int64_t limit) { return x < -limit ? -limit : (x > limit ? limit : x); }

/* The update's per-element settings (fused._sgd_update_chain's tensors and static choices). */
typedef struct {
    int grad_down, g_shift; /* grad_down: round the gradient down by g_shift bits and clip to g_limit; else << */
    int64_t g_limit;
    int decay, decay_shift; /* 0 none, 1 add round(w / 2**decay_shift) (nearest), 2 add w << decay_shift */
    int64_t mult;
    int mult_shift;
    int momentum, m_shift, fv;
    int64_t w_limit;
    int carry; /* the step carry: add the residual *r, round to nearest, keep what the rounding left in *r */
} niti_sgd_args;

/* The update's settings as loop constants (read once, so the compiler need not reload them after each store). */
typedef struct {
    int grad_down, gs, ds, decay, mult_shift, m_shift, fv;
    int64_t g_limit, mult, w_limit;
} niti_sgd_consts;

static inline niti_sgd_consts sgd_consts(const niti_sgd_args *p) {
    niti_sgd_consts k = {p->grad_down, p->g_shift, p->decay_shift, p->decay, p->mult_shift, p->m_shift, p->fv,
                         p->g_limit, p->mult, p->w_limit};
    return k;
}

/* One element of the momentum-SGD step (docs/numerics.md section 5), in int64; returns the new weight and sets *v
 * to the new velocity (and *r to the new residual with the step carry).  The rounding mode, the momentum and the
 * carry are compile-time constants of each specialisation below; the gradient's shift direction and the decay are
 * selected without branches (both sides computed, the unselected one discarded, the decay by masks), so GCC
 * vectorises the loop in int64 lanes. */
static inline __attribute__((always_inline)) int64_t sgd_element(int64_t x, int64_t w, int64_t *v, int64_t *r,
                                                                 const niti_sgd_consts k, const int mode,
                                                                 const int momentum, const int carry, int64_t g_draw,
                                                                 int64_t s_draw) {
    int64_t down = clamp(round_shift(x, k.gs, mode, g_draw), k.g_limit);
    int64_t up = (int64_t)((uint64_t)x << k.gs);
    x = k.grad_down ? down : up;
    int64_t d_near = round_shift(w, k.ds, 0, 0), d_up = (int64_t)((uint64_t)w << k.ds);
    x += (d_near & -(int64_t)(k.decay == 1)) | (d_up & -(int64_t)(k.decay == 2)); /* masks: a nested ?: stops GCC */
    x = round_shift(x * k.mult, k.mult_shift, 0, 0);
    if (momentum) x = *v + round_shift(x - *v, k.m_shift, 0, 0);
    *v = x;
    if (carry) {
        int64_t total = x + *r, step = round_shift(total, k.fv, 0, 0);
        *r = total - (int64_t)((uint64_t)step << k.fv);
        return clamp(w - step, k.w_limit);
    }
    return clamp(w - round_shift(x, k.fv, mode, s_draw), k.w_limit);
}

/* The SGD loops are also compiled for AVX-512 (F, DQ, VL, BW: 64-bit lanes with shifts, abs and multiplies; GCC
 * vectorises the int64 element eight lanes wide, against four with AVX2's emulated ones) and chosen at run time where
 * the CPU has it (isa.h): LeNet's 400k-weight layer, one core, 3.5 ms scalar, 1.75 ms AVX2, 0.9 ms AVX-512. */
/* One function per (gradient type, weight type): int32 or int64 gradients, int8 or int16 weights.  v_in / v_out
 * (int32) only with momentum; g_noise / s_noise (int64 draws) only for stochastic rounding (g_noise when the
 * gradient is rounded down; s_noise not with the carry); ri / ro (int16 residuals in / out) only with the carry.
 * NAME_cases runs one thread's range [lo, hi) in the specialisation `kind` (the rounding mode's block, the momentum
 * and the carry as constants); NAME_cases512 is the same code compiled for AVX-512. */
#define NITI_SGD(NAME, GT, WT)                                                                                       \
    static inline __attribute__((always_inline)) void NAME##_range(                                               \
        const GT *restrict grad, const WT *restrict w, const int32_t *restrict v_in, long lo, long hi,             \
        const niti_sgd_consts k, const int mode, const int momentum, const int carry,                               \
        const int64_t *restrict g_noise, const int64_t *restrict s_noise, WT *restrict w_out,                      \
        int32_t *restrict v_out, const int16_t *restrict r_in, int16_t *restrict r_out) {                          \
        for (long i = lo; i < hi; i++) {                                                                           \
            int64_t v = momentum ? v_in[i] : 0, r = carry ? r_in[i] : 0;                                           \
            int64_t nw = sgd_element(grad[i], w[i], &v, &r, k, mode, momentum, carry,                              \
                                     mode == 4 && g_noise ? g_noise[i] : 0, mode == 4 && s_noise ? s_noise[i] : 0); \
            w_out[i] = (WT)nw;                                                                                     \
            if (momentum) v_out[i] = (int32_t)v;                                                                   \
            if (carry) r_out[i] = (int16_t)r;                                                                      \
        }                                                                                                          \
    }                                                                                                              \
    NITI_SGD_DISPATCH(NAME, NAME##_cases, GT, WT, )                                                                \
    NITI_SGD_DISPATCH(NAME, NAME##_cases512, GT, WT, NITI_AVX512)                                                  \
    void NAME(const GT *grad, const WT *w, const int32_t *v_in, long n, const niti_sgd_args *args, int mode,       \
              const int64_t *g_noise, const int64_t *s_noise, WT *w_out, int32_t *v_out, int nt,                   \
              const int16_t *ri, int16_t *ro) {                                                                    \
        niti_sgd_args p = *args;                                                                                   \
        const niti_sgd_consts consts = sgd_consts(&p);                                                             \
        if (n < NITI_SMALL) nt = 1;                                                                                \
        int kind = (mode == 0 ? 0 : mode == 1 ? 1 : mode == 2 ? 2 : 3) * 4 + 2 * (p.momentum != 0) + (p.carry != 0); \
        int wide = niti_use_avx512(&niti_chains_avx512);                                                           \
        _Pragma("omp parallel num_threads(nt)") {                                                                  \
            int t = omp_get_thread_num(), nth = omp_get_num_threads();                                             \
            long lo = n * t / nth, hi = n * (t + 1) / nth;                                                         \
            if (wide)                                                                                              \
                NAME##_cases512(kind, grad, w, v_in, lo, hi, consts, g_noise, s_noise, w_out, v_out, ri, ro);      \
            else                                                                                                   \
                NAME##_cases(kind, grad, w, v_in, lo, hi, consts, g_noise, s_noise, w_out, v_out, ri, ro);         \
        }                                                                                                          \
    }

/* NAME_cases(512): the switch over the sixteen specialisations, compiled with the attribute ATTR. */
#define NITI_SGD_DISPATCH(NAME, CASES, GT, WT, ATTR)                                                                 \
    static ATTR __attribute__((noinline)) void CASES(                                                              \
        int kind, const GT *restrict grad, const WT *restrict w, const int32_t *restrict v_in, long lo, long hi,   \
        const niti_sgd_consts consts, const int64_t *restrict g_noise, const int64_t *restrict s_noise,            \
        WT *restrict w_out, int32_t *restrict v_out, const int16_t *restrict ri, int16_t *restrict ro) {           \
        switch (kind) {                                                                                            \
            NITI_SGD_CASES(NAME, 0, 0) NITI_SGD_CASES(NAME, 1, 1) NITI_SGD_CASES(NAME, 2, 2)                        \
            NITI_SGD_CASES(NAME, 3, 4)                                                                             \
        }                                                                                                          \
    }

/* The four (momentum, carry) specialisations of one rounding mode (code M, case block B). */
#define NITI_SGD_CASE(NAME, B, M, MOM, CARRY)                                                                        \
    case (B) * 4 + 2 * (MOM) + (CARRY):                                                                              \
        NAME##_range(grad, w, v_in, lo, hi, consts, M, MOM, CARRY, g_noise, s_noise, w_out, v_out, ri, ro);          \
        break;
#define NITI_SGD_CASES(NAME, B, M)                                                                                   \
    NITI_SGD_CASE(NAME, B, M, 0, 0) NITI_SGD_CASE(NAME, B, M, 0, 1) NITI_SGD_CASE(NAME, B, M, 1, 0)                \
    NITI_SGD_CASE(NAME, B, M, 1, 1)

NITI_SGD(niti_sgd_update_i32_i8, int32_t, int8_t)
NITI_SGD(niti_sgd_update_i32_i16, int32_t, int16_t)
NITI_SGD(niti_sgd_update_i64_i8, int64_t, int8_t)
NITI_SGD(niti_sgd_update_i64_i16, int64_t, int16_t)
