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
