/* Exact int8 x int8 -> int32 matrix product for AVX2 CPUs without VNNI (docs/numerics.md §1).
 *
 * C (M x N, int32, row-major) = A (M x K, int8, any strides) * B (K x N, int8, any strides).
 * Operands are widened to int16 and multiplied with vpmaddwd: each 32-bit lane receives
 * a[k]*b[k][j] + a[k+1]*b[k+1][j], exact (|sum| <= 2 * 128 * 128 = 32768 fits int32), and lanes are
 * accumulated with vpaddd.  The caller guarantees K * 127 * 127 < 2**31 (niti splits longer K), so no
 * partial sum can wrap.  Integer instructions only.
 *
 * Layout: B is packed per K block (by each thread) into panels of 16 columns, K in pairs:
 * panel[p][j][2] = (b[2p][j], b[2p+1][j]).  A is packed per 4-row block and K block into int16 pairs.
 * The 4x16 micro-kernel keeps 8 accumulators.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MR 4
#define NR 16
#define KC 256 /* K pairs per block: a B panel block is 256 * 16 * 2 * 2 = 16 KiB */
#define GROUP 16 /* 4-row blocks of A packed together */

/* Pack pairs [p0, p0 + kp) of B's rows into panels of 16 columns: out[q][p][j][2] = (b[2P][col], b[2P+1][col]),
 * P = p0 + p, col = 16q + j; rows past K and columns past N are zero. */
static void pack_b_block(const int8_t *b, long K, long N, long sb0, long sb1, long p0, long kp, int16_t *out) {
    long panels = (N + NR - 1) / NR;
    for (long q = 0; q < panels; q++) {
        int16_t *dst = out + q * kp * NR * 2;
        long p = 0;
        if (sb1 == 1 && q * NR + NR <= N) {
            /* Row-major B, a whole panel: interleave 16 bytes of rows k0 and k1 into int16 pairs. */
            for (; p < kp && 2 * (p0 + p) + 1 < K; p++) {
                const int8_t *r = b + 2 * (p0 + p) * sb0 + q * NR;
                __m128i r0 = _mm_loadu_si128((const __m128i *)r);
                __m128i r1 = _mm_loadu_si128((const __m128i *)(r + sb0));
                _mm256_storeu_si256((__m256i *)(dst + p * NR * 2), _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(r0, r1)));
                _mm256_storeu_si256((__m256i *)(dst + p * NR * 2 + 16),
                                    _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(r0, r1)));
            }
        }
        for (; p < kp; p++) {
            long k0 = 2 * (p0 + p), k1 = k0 + 1;
            for (long j = 0; j < NR; j++) {
                long col = q * NR + j;
                int16_t v0 = 0, v1 = 0;
                if (col < N) {
                    if (k0 < K) v0 = b[k0 * sb0 + col * sb1];
                    if (k1 < K) v1 = b[k1 * sb0 + col * sb1];
                }
                dst[(p * NR + j) * 2] = v0;
                dst[(p * NR + j) * 2 + 1] = v1;
            }
        }
    }
}

/* Pack rows [i0, i0 + mr) of A, pairs [p0 + p_from, p0 + kp), as int16 pairs: row r at ap + r * kp * 2 (rows past
 * M and k past K are zero). */
static void pack_a_block(const int8_t *a, long K, long sa0, long sa1, long i0, int mr, long p0, long kp, long p_from,
                         int16_t *ap) {
    for (int r = 0; r < MR; r++) {
        int16_t *dst = ap + r * kp * 2;
        if (r < mr && sa1 == 1 && p_from == 0) { /* a contiguous row: its int16 widening is the pair layout */
            const int8_t *src = a + (i0 + r) * sa0 + 2 * p0;
            long n = 2 * kp, k_left = K - 2 * p0, t = 0;
            if (n > k_left) n = k_left;
            for (; t + 16 <= n; t += 16)
                _mm256_storeu_si256((__m256i *)(dst + t),
                                    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(src + t))));
            for (; t < n; t++) dst[t] = src[t];
            for (; t < 2 * kp; t++) dst[t] = 0;
            continue;
        }
        for (long p = p_from; p < kp; p++) {
            long k0 = 2 * (p0 + p), k1 = k0 + 1;
            int16_t v0 = 0, v1 = 0;
            if (r < mr) {
                const int8_t *row = a + (i0 + r) * sa0;
                v0 = row[k0 * sa1];
                if (k1 < K) v1 = row[k1 * sa1];
            }
            dst[2 * p] = v0;
            dst[2 * p + 1] = v1;
        }
    }
}

/* Pack row blocks [ib, ib + g) of A for pairs [p0, p0 + kp): block j at ap + j * MR * kp * 2.  Column-major A
 * (a transposed row-major matrix, as in weight gradients and first-layer columns) is read a K row at a time for all
 * g blocks (g·4 adjacent bytes), four pairs at once: interleave rows k0 and k1, widen, transpose each 4 x 4 block of
 * pairs.  K rows far apart (a power-of-two stride) would thrash the cache if each block read them separately. */
static void pack_a_group(const int8_t *a, long M, long K, long sa0, long sa1, long ib, long g, long p0, long kp,
                         int16_t *ap) {
    long full = 0; /* pairs done by the vector path, for the blocks with all MR rows */
    long whole = g;
    if (sa0 == 1 && sa1 != 1) {
        while (whole > 0 && (ib + whole) * MR > M) whole--;
        for (; full + 4 <= kp && 2 * (p0 + full + 3) + 1 < K; full += 4) {
            const int8_t *krow[8];
            for (int u = 0; u < 8; u++) krow[u] = a + (2 * (p0 + full) + u) * sa1 + ib * MR;
            for (long j = 0; j < whole; j++) {
                __m128i v[4];
                for (int u = 0; u < 4; u++) {
                    int32_t w0, w1;
                    memcpy(&w0, krow[2 * u] + j * MR, 4);
                    memcpy(&w1, krow[2 * u + 1] + j * MR, 4);
                    v[u] = _mm_cvtepi8_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(w0), _mm_cvtsi32_si128(w1)));
                }
                __m128i t0 = _mm_unpacklo_epi32(v[0], v[1]), t1 = _mm_unpacklo_epi32(v[2], v[3]);
                __m128i t2 = _mm_unpackhi_epi32(v[0], v[1]), t3 = _mm_unpackhi_epi32(v[2], v[3]);
                int32_t *dst = (int32_t *)(ap + j * MR * kp * 2) + full;
                _mm_storeu_si128((__m128i *)dst, _mm_unpacklo_epi64(t0, t1));
                _mm_storeu_si128((__m128i *)(dst + kp), _mm_unpackhi_epi64(t0, t1));
                _mm_storeu_si128((__m128i *)(dst + 2 * kp), _mm_unpacklo_epi64(t2, t3));
                _mm_storeu_si128((__m128i *)(dst + 3 * kp), _mm_unpackhi_epi64(t2, t3));
            }
        }
    }
    for (long j = 0; j < g; j++) {
        long i0 = (ib + j) * MR;
        int mr = (int)(M - i0 < MR ? M - i0 : MR);
        pack_a_block(a, K, sa0, sa1, i0, mr, p0, kp, j < whole ? full : 0, ap + j * MR * kp * 2);
    }
}

static inline void kernel_4x16(const int16_t *a, long kp, const int16_t *bp, int32_t *c, long ldc, int mr, int nr,
                               int first) {
    __m256i c00 = _mm256_setzero_si256(), c01 = _mm256_setzero_si256();
    __m256i c10 = _mm256_setzero_si256(), c11 = _mm256_setzero_si256();
    __m256i c20 = _mm256_setzero_si256(), c21 = _mm256_setzero_si256();
    __m256i c30 = _mm256_setzero_si256(), c31 = _mm256_setzero_si256();
    const int32_t *a32 = (const int32_t *)a; /* rows of kp int16 pairs, row r at a32 + r * kp */
    for (long p = 0; p < kp; p++) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(bp + p * 32));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + p * 32 + 16));
        __m256i x;
        x = _mm256_set1_epi32(a32[p]);
        c00 = _mm256_add_epi32(c00, _mm256_madd_epi16(x, b0));
        c01 = _mm256_add_epi32(c01, _mm256_madd_epi16(x, b1));
        x = _mm256_set1_epi32(a32[kp + p]);
        c10 = _mm256_add_epi32(c10, _mm256_madd_epi16(x, b0));
        c11 = _mm256_add_epi32(c11, _mm256_madd_epi16(x, b1));
        x = _mm256_set1_epi32(a32[2 * kp + p]);
        c20 = _mm256_add_epi32(c20, _mm256_madd_epi16(x, b0));
        c21 = _mm256_add_epi32(c21, _mm256_madd_epi16(x, b1));
        x = _mm256_set1_epi32(a32[3 * kp + p]);
        c30 = _mm256_add_epi32(c30, _mm256_madd_epi16(x, b0));
        c31 = _mm256_add_epi32(c31, _mm256_madd_epi16(x, b1));
    }
    __m256i acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
    if (nr == NR) { /* a whole tile row: vector stores */
        for (int r = 0; r < mr; r++) {
            __m256i *row = (__m256i *)(c + r * ldc);
            if (first) {
                _mm256_storeu_si256(row, acc[r][0]);
                _mm256_storeu_si256(row + 1, acc[r][1]);
            } else {
                _mm256_storeu_si256(row, _mm256_add_epi32(_mm256_loadu_si256(row), acc[r][0]));
                _mm256_storeu_si256(row + 1, _mm256_add_epi32(_mm256_loadu_si256(row + 1), acc[r][1]));
            }
        }
        return;
    }
    int32_t tile[MR][NR];
    for (int r = 0; r < MR; r++) {
        _mm256_storeu_si256((__m256i *)&tile[r][0], acc[r][0]);
        _mm256_storeu_si256((__m256i *)&tile[r][8], acc[r][1]);
    }
    for (int r = 0; r < mr; r++) {
        int32_t *row = c + r * ldc;
        if (first) {
            for (int j = 0; j < nr; j++) row[j] = tile[r][j];
        } else {
            for (int j = 0; j < nr; j++) row[j] += tile[r][j];
        }
    }
}

/* Returns 0 on success, 1 when a scratch allocation failed (C is then unspecified). */
int niti_int8_gemm(const int8_t *a, const int8_t *b, int32_t *c, long M, long N, long K, long sa0, long sa1,
                   long sb0, long sb1, int nt) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {
        memset(c, 0, sizeof(int32_t) * M * N);
        return 0;
    }
    long kp_total = (K + 1) / 2;
    long panels = (N + NR - 1) / NR;
    long blocks = (M + MR - 1) / MR;
    int failed = 0;
#pragma omp parallel num_threads(nt)
    {
        /* Each thread takes a contiguous range of row blocks and walks K blocks outermost, packing each K block
         * of B (panels x 16 KiB) itself: the block is reused by all its row blocks while in cache, and B is
         * never packed whole (weight gradients have a long K: that copy would be twice B's size). */
        int tid = omp_get_thread_num(), team = omp_get_num_threads();
        long b_lo = blocks * tid / team, b_hi = blocks * (tid + 1) / team;
        int16_t *bp = b_lo < b_hi ? (int16_t *)aligned_alloc(64, sizeof(int16_t) * panels * KC * NR * 2) : NULL;
        /* GROUP 4-row blocks of A for one K block, as int16 pairs (64 KiB) */
        int16_t *ap = b_lo < b_hi ? (int16_t *)aligned_alloc(64, sizeof(int16_t) * GROUP * MR * KC * 2) : NULL;
        if (b_lo < b_hi && (!bp || !ap)) {
#pragma omp atomic write
            failed = 1;
        }
        for (long p0 = 0; bp && ap && p0 < kp_total; p0 += KC) {
            long kp = kp_total - p0 < KC ? kp_total - p0 : KC;
            pack_b_block(b, K, N, sb0, sb1, p0, kp, bp);
            for (long ib = b_lo; ib < b_hi; ib += GROUP) {
                long g = b_hi - ib < GROUP ? b_hi - ib : GROUP;
                pack_a_group(a, M, K, sa0, sa1, ib, g, p0, kp, ap);
                for (long j = 0; j < g; j++) {
                    long i0 = (ib + j) * MR;
                    int mr = (int)(M - i0 < MR ? M - i0 : MR);
                    for (long q = 0; q < panels; q++) {
                        long j0 = q * NR;
                        int nr = (int)(N - j0 < NR ? N - j0 : NR);
                        kernel_4x16(ap + j * MR * kp * 2, kp, bp + q * kp * NR * 2, c + i0 * N + j0, N, mr, nr,
                                    p0 == 0);
                    }
                }
            }
        }
        free(bp);
        free(ap);
    }
    return failed;
}
