/* im2col of NHWC int8 for the CPU (niti.kernels.cpu_im2col; conv.im2col's PyTorch copy is the reference).
 *
 * cols[(b, oy, ox), (i, j, ch)] = x[b, oy * sh - ph + i, ox * sw - pw + j, ch], zero outside the input: rows in
 * (n, ho, wo) order, columns in (i, j, c) order.  Padding is read as zeros here, so no padded copy of the input
 * is made; a window row's taps that all lie inside the input are one contiguous copy of kw * c bytes.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

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
                for (int i = 0; i < kh; i++, dst += tap_row) {
                    long iy = oy * sh - ph + i;
                    if (iy < 0 || iy >= h) {
                        memset(dst, 0, tap_row);
                        continue;
                    }
                    const int8_t *restrict src = x + ((b * h + iy) * w) * c;
                    if (inside) {
                        memcpy(dst, src + x0 * c, tap_row);
                        continue;
                    }
                    for (int j = 0; j < kw; j++) {
                        long jx = x0 + j;
                        if (jx < 0 || jx >= w) memset(dst + j * c, 0, c);
                        else memcpy(dst + j * c, src + jx * c, c);
                    }
                }
            }
        }
    }
}

/* Copy len bytes; a run of 8-32 bytes (an output row of a small image) as two fixed-size moves that overlap inside
 * the run, inlined, instead of a library call. */
static inline void copy_run(int8_t *restrict d, const int8_t *restrict s, long len) {
    if (len >= 16 && len <= 32) {
        memcpy(d, s, 16);
        memcpy(d + len - 16, s + len - 16, 16);
    } else if (len >= 8 && len < 16) {
        memcpy(d, s, 8);
        memcpy(d + len - 8, s + len - 8, 8);
    } else {
        memcpy(d, s, len);
    }
}

/* The columns transposed, for layers with short window rows (conv.im2col_t): cols_t[(i, j, ch), (b, oy, ox)] =
 * x[b, oy * sh - ph + i, ox * sw - pw + j, ch], zero outside the input.  Each (tap, channel) row is built image row
 * by image row; with one channel and stride 1 an output row's in-bounds run is one contiguous copy of the input row.
 * PyTorch's strided copy_ of a padded input walks 4-D views, 25-27 of them for a first layer. */
void niti_im2col_t_nhwc(const int8_t *restrict x, long n, long h, long w, long c, int kh, int kw, int sh, int sw,
                        int ph, int pw, long ho, long wo, int8_t *restrict cols_t, int nt) {
    long per_tap = n * ho * wo;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (long r = 0; r < (long)kh * kw * c; r++) {
        for (long b = 0; b < n; b++) {
            int i = (int)(r / (kw * c)), j = (int)(r / c % kw);
            long ch = r % c;
            int8_t *restrict dst = cols_t + r * per_tap + b * ho * wo;
            /* the output columns ox whose input column lies inside: lo <= ox < hi */
            long lo = 0, hi = wo;
            while (lo < wo && lo * sw - pw + j < 0) lo++;
            while (hi > lo && (hi - 1) * sw - pw + j >= w) hi--;
            for (long oy = 0; oy < ho; oy++, dst += wo) {
                long iy = oy * sh - ph + i;
                if (iy < 0 || iy >= h || lo >= hi) {
                    memset(dst, 0, wo);
                    continue;
                }
                const int8_t *restrict src = x + ((b * h + iy) * w + (lo * sw - pw + j)) * c + ch;
                if (lo > 0) memset(dst, 0, lo);
                if (c == 1 && sw == 1) {
                    copy_run(dst + lo, src, hi - lo);
                } else {
                    long step = (long)sw * c;
                    for (long ox = lo; ox < hi; ox++, src += step) dst[ox] = *src;
                }
                if (hi < wo) memset(dst + hi, 0, wo - hi);
            }
        }
    }
}
