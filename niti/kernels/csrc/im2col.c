/* im2col of NHWC int8 for the CPU (niti.kernels.cpu_im2col; conv.im2col's PyTorch copy is the reference).
 *
 * cols[(b, oy, ox), (i, j, ch)] = x[b, oy * sh - ph + i, ox * sw - pw + j, ch], zero outside the input: rows in
 * (n, ho, wo) order, columns in (i, j, c) order.  Padding is read as zeros here, so no padded copy of the input
 * is made; a window row's taps that all lie inside the input are one contiguous copy of kw * c bytes.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* Copy (or zero) len bytes.  A short run (a window row of a few-channel input: LeNet's first layer copies 5 bytes,
 * VGG's and ResNet's 9) is two fixed-size moves that overlap inside the run, inlined, instead of a library call per
 * run: LeNet's first columns 3.0 -> 0.6 ms on one core. */
static inline void copy_run(int8_t *restrict d, const int8_t *restrict s, long len) {
    if (len >= 16 && len <= 32) {
        memcpy(d, s, 16);
        memcpy(d + len - 16, s + len - 16, 16);
    } else if (len >= 8 && len < 16) {
        memcpy(d, s, 8);
        memcpy(d + len - 8, s + len - 8, 8);
    } else if (len >= 4 && len < 8) {
        memcpy(d, s, 4);
        memcpy(d + len - 4, s + len - 4, 4);
    } else if (len >= 2 && len < 4) {
        memcpy(d, s, 2);
        memcpy(d + len - 2, s + len - 2, 2);
    } else if (len == 1) {
        *d = *s;
    } else {
        memcpy(d, s, len);
    }
}

static inline void zero_run(int8_t *restrict d, long len) {
    if (len <= 8) {
        for (long k = 0; k < len; k++) d[k] = 0;
    } else {
        memset(d, 0, len);
    }
}

void niti_im2col_nhwc(const int8_t *restrict x, long n, long h, long w, long c, int kh, int kw, int sh, int sw,
                      int ph, int pw, long ho, long wo, int8_t *restrict cols, int nt) {
    long row_bytes = (long)kh * kw * c, tap_row = (long)kw * c;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (long b = 0; b < n; b++) {
        for (long oy = 0; oy < ho; oy++) {
            for (long ox = 0; ox < wo; ox++) {
                int8_t *restrict dst = cols + ((b * ho + oy) * wo + ox) * row_bytes;
                long x0 = ox * sw - pw;
                int inside = x0 >= 0 && x0 + kw <= w;
                long y0 = oy * sh - ph;
                if (tap_row <= 16 && row_bytes >= 16 && inside && ox + 1 < wo && y0 >= 0 && y0 + kh <= h &&
                    ((b * h + y0 + kh - 1) * w + x0) * c + 16 <= n * h * w * c) {
                    /* A window of short rows wholly inside the input, not its group's last: one 8- or 16-byte move
                     * per row.  Each writes up to 15 bytes past its row, so at most into the next window (a window
                     * has >= 16 bytes), which this same thread writes next, from its start, over them; the group's
                     * last window takes the exact copies below, so nothing past the group (another thread's, or
                     * past cols) is touched.  The reads stay inside x (the last condition). */
                    const int8_t *restrict src = x + ((b * h + y0) * w + x0) * c;
                    if (tap_row <= 8)
                        for (int i = 0; i < kh; i++, dst += tap_row, src += w * c) memcpy(dst, src, 8);
                    else
                        for (int i = 0; i < kh; i++, dst += tap_row, src += w * c) memcpy(dst, src, 16);
                    continue;
                }
                for (int i = 0; i < kh; i++, dst += tap_row) {
                    long iy = oy * sh - ph + i;
                    if (iy < 0 || iy >= h) {
                        zero_run(dst, tap_row);
                        continue;
                    }
                    const int8_t *restrict src = x + ((b * h + iy) * w) * c;
                    if (inside) {
                        copy_run(dst, src + x0 * c, tap_row);
                        continue;
                    }
                    for (int j = 0; j < kw; j++) {
                        long jx = x0 + j;
                        if (jx < 0 || jx >= w) zero_run(dst + j * c, c);
                        else copy_run(dst + j * c, src + jx * c, c);
                    }
                }
            }
        }
    }
}
