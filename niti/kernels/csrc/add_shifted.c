/* The exact aligned sum of two int8 tensors for the CPU (niti.kernels.cpu_add; numerics.aligned_sum is the
 * reference): out = a * 2**sa + b * 2**sb in int32, for shifts 0 <= sa, sb <= 22 (|out| <= 2 * 128 * 2**22 =
 * 2**30: no overflow).  Multiplication by the power of two rather than a left shift, which C leaves undefined
 * for negative values; one pass that reads 2 bytes and writes 4 per element, vectorised.
 */
#include <omp.h>
#include <stdint.h>

void niti_add_shifted_i8(const int8_t *restrict a, int sa, const int8_t *restrict b, int sb, long n,
                         int32_t *restrict out, int nt) {
    int32_t ma = (int32_t)1 << sa, mb = (int32_t)1 << sb;
    if (n < (1L << 16)) nt = 1; /* below ~64 K elements a parallel region costs more than it saves */
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long i = 0; i < n; i++) out[i] = (int32_t)a[i] * ma + (int32_t)b[i] * mb;
}
