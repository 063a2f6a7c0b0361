/* k x k max pooling of NHWC int8 with any stride and padding, and its backward, for the CPU
 * (niti.kernels.pool.maxpool2d_strided; the PyTorch taps loop is the reference and the fallback).  The
 * non-overlapping pool (stride k, no padding) takes the same forward and niti_maxpool_route_i8 as its backward
 * (niti.kernels.pool.maxpool2d; the fused chain is the reference and the fallback).
 *
 * Taps are numbered t = i * k + j (row i, column j of the window).  Padded cells read -128, below any clipped
 * int8, so a window's maximum is always an input element; ties keep the first maximum (strictly greater wins).
 * Backward adds each output's int8 error to the input element its index names, in int16 (at most k * k windows
 * cover an element: |sum| <= k * k * 128 <= 32767 for k <= 15, the caller's condition): an image's outputs only
 * touch that image, so images run in parallel without races and the sums are exact.  Pointers are `restrict`
 * (distinct tensors), so int8 stores do not force reloads.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* One row of outputs (b, oy) of any pool: padded taps are skipped, the running maximum kept in the output. */
static inline void pool_row(const int8_t *restrict x, long b, long oy, long h, long w,
                                                           long c, const int k, const int stride, const int pad,
                                                           long wo, int8_t *restrict out, int8_t *restrict index) {
    for (long ox = 0; ox < wo; ox++) {
        int8_t *restrict o = out + ox * c;
        int8_t *restrict ix = index + ox * c;
        for (long ch = 0; ch < c; ch++) {
            o[ch] = -128;
            ix[ch] = 0;
        }
        for (int t = 0; t < k * k; t++) {
            long iy = oy * stride + t / k - pad, jx = ox * stride + t % k - pad;
            if (iy < 0 || iy >= h || jx < 0 || jx >= w) continue; /* -128: never strictly greater */
            const int8_t *restrict src = x + ((b * h + iy) * w + jx) * c;
            if (t == 0) {
                memcpy(o, src, c);
                continue;
            }
            for (long ch = 0; ch < c; ch++) { /* branch-free, so the compiler vectorises it */
                int8_t v = src[ch], better = v > o[ch];
                o[ch] = better ? v : o[ch];
                ix[ch] = better ? (int8_t)t : ix[ch];
            }
        }
    }
}

/* One row of outputs of a non-overlapping k x k pool (stride k, no padding: every tap inside the input) with k a
 * compile-time constant: per channel the taps are compared in registers and each output stored once (the generic
 * pool_row stores the running maximum after every tap, 4x slower on LeNet's 20-channel pool). */
static inline __attribute__((always_inline)) void pool_row_k(const int8_t *restrict x, long b, long oy, long h, long w,
                                                             long c, const int k, long wo, int8_t *restrict out,
                                                             int8_t *restrict index) {
    const int8_t *restrict row = x + (b * h + oy * k) * w * c;
    for (long ox = 0; ox < wo; ox++) {
        const int8_t *restrict win = row + ox * k * c;
        int8_t *restrict o = out + ox * c;
        int8_t *restrict ix = index + ox * c;
        for (long ch = 0; ch < c; ch++) {
            int8_t best = win[ch], at = 0;
            for (int t = 1; t < k * k; t++) {
                int8_t v = win[((t / k) * w + t % k) * c + ch], better = v > best;
                best = better ? v : best;
                at = better ? (int8_t)t : at;
            }
            o[ch] = best;
            ix[ch] = at;
        }
    }
}

void niti_maxpool_strided(const int8_t *restrict x, long n, long h, long w, long c, int k, int stride, int pad,
                          long ho, long wo, int8_t *restrict out, int8_t *restrict index, int nt) {
    int plain = stride == k && pad == 0; /* non-overlapping, every window inside the input */
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (long b = 0; b < n; b++) {
        for (long oy = 0; oy < ho; oy++) {
            int8_t *restrict o = out + (b * ho + oy) * wo * c, *restrict ix = index + (b * ho + oy) * wo * c;
            if (plain && k == 2) pool_row_k(x, b, oy, h, w, c, 2, wo, o, ix);
            else if (plain && k == 3) pool_row_k(x, b, oy, h, w, c, 3, wo, o, ix);
            else pool_row(x, b, oy, h, w, c, k, stride, pad, wo, o, ix);
        }
    }
}

void niti_maxpool_strided_backward(const int8_t *restrict err, const int8_t *restrict index, long n, long h, long w,
                                   long c, int k, int stride, int pad, long ho, long wo, int16_t *restrict out,
                                   int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long b = 0; b < n; b++) {
        memset(out + b * h * w * c, 0, sizeof(int16_t) * h * w * c);
        long offset[128]; /* per tap: its element's offset from the window's top-left, or -1 outside the input */
        for (long oy = 0; oy < ho; oy++) {
            for (long ox = 0; ox < wo; ox++) {
                long y0 = oy * stride - pad, x0 = ox * stride - pad;
                for (int t = 0; t < k * k; t++) {
                    long iy = y0 + t / k, jx = x0 + t % k;
                    /* Only an int8 input of -128 (never a clipped activation) can leave a padded first tap as the
                     * maximum; its error falls on the padding and is dropped, as in the PyTorch reference. */
                    offset[t] = (iy < 0 || iy >= h || jx < 0 || jx >= w) ? -1 : ((b * h + iy) * w + jx) * c;
                }
                const int8_t *e = err + ((b * ho + oy) * wo + ox) * c;
                const int8_t *ix = index + ((b * ho + oy) * wo + ox) * c;
                for (long ch = 0; ch < c; ch++) {
                    long off = offset[ix[ch]];
                    if (off >= 0) out[off + ch] = (int16_t)(out[off + ch] + e[ch]);
                }
            }
        }
    }
}

/* Backward of a non-overlapping pool (stride k, no padding): each input element is the first maximum of at most one
 * window, so it receives that window's int8 error or 0 (also in the trailing rows and columns no window covers). */
/* One image of niti_maxpool_route_i8 with k a compile-time constant where the caller specialises; rows and columns
 * no window covers are zeroed (the rest is written once). */
static inline __attribute__((always_inline)) void route_image(const int8_t *restrict err,
                                                              const int8_t *restrict index, long b, long h, long w,
                                                              long c, const int k, long ho, long wo,
                                                              int8_t *restrict out) {
    int8_t *restrict img = out + b * h * w * c;
    if (ho * k < h || wo * k < w) memset(img, 0, h * w * c);
    for (long oy = 0; oy < ho; oy++) {
        for (long ox = 0; ox < wo; ox++) {
            const int8_t *restrict e = err + ((b * ho + oy) * wo + ox) * c;
            const int8_t *restrict ix = index + ((b * ho + oy) * wo + ox) * c;
            for (int t = 0; t < k * k; t++) {
                int8_t *restrict d = img + ((oy * k + t / k) * w + ox * k + t % k) * c;
                for (long ch = 0; ch < c; ch++) d[ch] = (int8_t)(e[ch] & -(ix[ch] == t)); /* vectorises */
            }
        }
    }
}

void niti_maxpool_route_i8(const int8_t *restrict err, const int8_t *restrict index, long n, long h, long w, long c,
                           int k, long ho, long wo, int8_t *restrict out, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long b = 0; b < n; b++) {
        if (k == 2) route_image(err, index, b, h, w, c, 2, ho, wo, out); /* the common 2x2 pool, specialised */
        else route_image(err, index, b, h, w, c, k, ho, wo, out);
    }
}
