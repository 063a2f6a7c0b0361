/* Run-time choice between a loop's AVX2 build (the library's flags) and its AVX-512 build (F, DQ, VL, BW: 64-bit
 * lanes with shifts, abs and multiplies, and 64-byte vectors), used where GCC vectorises a loop wider with them.
 * Both builds are the same integer operations, so the bits never depend on the choice.  Each library keeps its own
 * flag (-1: probe the CPU on first use, 0: AVX2 only, set from Python by the tests that pin both builds). */
#ifndef NITI_ISA_H
#define NITI_ISA_H

#define NITI_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw")))

static inline int niti_use_avx512(int *flag) {
    if (*flag < 0) {
        __builtin_cpu_init();
        *flag = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
    }
    return *flag > 0;
}

#endif
