/* Counter-based random words for the CPU (docs/numerics.md section 14; niti.kernels.cpu_counter, pinned against
 * niti.counter_bits.word_reference and the tensor code).
 *
 * out[i] = mix(mix((start + i) ^ k1) ^ k2) & mask, mix = lowbias32 (two multiply-xorshift rounds), for a draw's keys
 * k1, k2. The caller guarantees start + count <= 2**32, so every index is a 32-bit word; uint32 arithmetic wraps
 * mod 2**32 by definition, which is the hash's definition, so the bits equal the int64 tensor code's.
 */
#include <omp.h>
#include <stdint.h>

#include "counter_hash.h"

void niti_counter_words(long start, long count, uint32_t k1, uint32_t k2, uint32_t mask, int64_t *restrict out,
                        int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < count; i++) {
        out[i] = (int64_t)(niti_counter_word((uint32_t)(start + i), k1, k2) & mask);
    }
}
