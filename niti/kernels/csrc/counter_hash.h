/* The counter-based hash of docs/numerics.md section 14, shared by the C loops that draw random bits
 * (counter_words.c, round_clip.c, bn_tables.c); pinned against niti.counter_bits.word_reference by the tests.
 *
 * mix = lowbias32: two multiply-xorshift rounds in uint32 arithmetic, whose wrap-around mod 2**32 is the hash's
 * definition. Element i of a draw with keys k1, k2 gets the word mix(mix(i ^ k1) ^ k2).
 */
#ifndef NITI_COUNTER_HASH_H
#define NITI_COUNTER_HASH_H
#include <stdint.h>

static inline uint32_t niti_mix(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

static inline uint32_t niti_counter_word(uint32_t index, uint32_t k1, uint32_t k2) {
    return niti_mix(niti_mix(index ^ k1) ^ k2);
}
#endif
