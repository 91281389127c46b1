/* CPU kernels for decoding, one token per row per step (loaded by biogpt/kernels/__init__.py).

   A decoding step reads every weight and every cached key and value once for a few rows, so its time is the
   time to stream them in. PyTorch's CPU kernels are far from that at this shape; these two are close.

   1. biogpt_int8_linear: y = x W^T + b with int8 weights and int8 activations on AMX tiles (Sapphire
      Rapids and later). int8 weights halve bf16's bytes; AMX turns them into products fast enough that
      memory, not arithmetic, stays the limit (AVX512-VNNI alone is slower than memory at 16 rows on 2 cores).
      Numerics (exact integer products, then one rounding):
        weights:      int8, symmetric, one scale per output row, packed once by the caller (layout below);
        activations:  int8, symmetric, one scale per input row, computed here from that row alone,
                      so a row's result never depends on the other rows of the batch;
        accumulation: int32 over the whole row (exact);
        output:       fp32, acc * x_scale[m] * w_scale[n] + bias[n], optionally through exact GELU
                      (erf to 1.5e-7, fused here to save a pass over the widest activations).
      Weight layout (built by biogpt.backends.cpu.forms), W zero padded to Np = 64*ceil(N/64) rows and
      Kp = 64*ceil(K/64) columns: for output group g (64 rows), input block kb (64 columns) and j = 0..3 one
      1 KiB AMX B tile, ordered [g][kb][j], so that each group is one contiguous stream. Tile row r holds
      input columns kb*64 + 4r .. +3 of output rows g*64 + 16j .. +15, interleaved:
      byte [r][4c + i] = W[g*64 + 16j + c][kb*64 + 4r + i].

   2. biogpt_decode_attention: one query per row over a bf16 KV cache. It writes the new key and value into
      the cache (rounded to nearest even, like a PyTorch cast) and attends in fp32: scores q.k / sqrt(D) over
      the real cached slots and the new one, softmax, weighted sum of values.
*/
#define _GNU_SOURCE /* syscall */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#ifndef PREFETCH_HINT
#define PREFETCH_HINT _MM_HINT_T0
#endif
#define GROUP_BYTES 4096 /* 4 output blocks (64 rows) per pass: C tiles 0-3, A tile 4, B tiles 5-7 */

/* Ask Linux for the AMX tile state (needed once per process before the first tile instruction). 0: granted. */
int biogpt_amx_init(void) {
    return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

static void configure_tiles(int rows) {
    tile_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    for (int t = 0; t < 4; t++) { /* C: rows x 16 int32 */
        cfg.rows[t] = (uint8_t)rows;
        cfg.colsb[t] = 64;
    }
    cfg.rows[4] = (uint8_t)rows; /* A: rows x 64 int8 */
    cfg.colsb[4] = 64;
    for (int t = 5; t < 8; t++) { /* B: 16 x (16 outputs x 4 inputs) int8; with 16 rows tile 5 may be a second A */
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* one row x [K] fp32 -> xq [Kp] int8 (zero padded to Kp) and its scale */
static void quantize_row(const float *x, int64_t K, int64_t Kp, int8_t *xq, float *scale) {
    __m512 vmax = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    float amax = _mm512_reduce_max_ps(vmax);
    for (; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    const float s = amax > 0.f ? amax / 127.f : 1.f, inv = 1.f / s;
    *scale = s;
    for (k = 0; k + 16 <= K; k += 16) {
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), _mm512_set1_ps(inv))); /* to nearest even */
        _mm_storeu_si128((__m128i *)(xq + k), _mm512_cvtsepi32_epi8(q));
    }
    for (; k < K; k++) xq[k] = (int8_t)nearbyintf(x[k] * inv); /* the same product as the vector loop */
    memset(xq + K, 0, (size_t)(Kp - K));
}

/* exp(x) for x <= 0, as softmax needs after subtracting the max: 2^n e^r with r = x - n ln2 in
   [-ln2/2, ln2/2] (ln2 split in two for an exact reduction), e^r by its degree-6 Taylor polynomial
   (relative error below 2e-7, about fp32 rounding). */
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.f)); /* exp(-87) is still a normal float */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

/* Exact (erf) GELU, x/2 (1 + erf(x / sqrt 2)), with erf by Abramowitz & Stegun 7.1.26 (absolute error below
   1.5e-7): erf|z| = 1 - t (a1 + t (a2 + .. t a5)) exp(-z^2), t = 1 / (1 + p|z|), sign restored after. */
static inline __m512 gelu_ps(__m512 x) {
    const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
    const __m512 az = _mm512_abs_ps(z);
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(az, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.f)));
    __m512 poly = _mm512_set1_ps(1.061405429f);
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-1.453152027f));
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
    poly = _mm512_mul_ps(poly, t);
    const __m512 e = _mm512_fnmadd_ps(poly, exp_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), az), az)), _mm512_set1_ps(1.f));
    const __m512 erf = _mm512_mask_sub_ps(e, _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps(), e);
    return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), _mm512_add_ps(erf, _mm512_set1_ps(1.f)));
}

/* acc [rows, 16] int32 -> y[m0 + r, n0 .. n0+16) */
static void write_block(const int32_t *acc, int rows, int64_t m0, int64_t n0, int64_t N, const float *xs,
                        const float *ws, const float *bias, int gelu, float *y) {
    int64_t nvalid = N - n0 < 16 ? N - n0 : 16;
    if (nvalid <= 0) return; /* a padding block */
    __mmask16 mask = (__mmask16)((1u << nvalid) - 1u);
    __m512 w = _mm512_maskz_loadu_ps(mask, ws + n0);
    __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + n0) : _mm512_setzero_ps();
    for (int r = 0; r < rows; r++) {
        __m512 a = _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + r * 16));
        __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(a, _mm512_set1_ps(xs[m0 + r])), w, b);
        if (gelu) v = gelu_ps(v);
        _mm512_mask_storeu_ps(y + (m0 + r) * N + n0, mask, v);
    }
}

/* y [M, N] = x [M, K] W^T + bias, then GELU where gelu is 1. w: packed tiles (layout above); w_scale [Np];
   bias [N] or NULL; work: M*Kp int8 + M floats of scratch. */
void biogpt_int8_linear(const float *x, int64_t M, int64_t K, const int8_t *w, const float *w_scale,
                        const float *bias, int gelu, int64_t N, float *y, int8_t *work, int threads) {
    const int64_t Kp = (K + 63) / 64 * 64, KB = Kp / 64, groups = (N + 63) / 64;
    int8_t *xq = work;
    float *xs = (float *)(work + M * Kp);
#pragma omp parallel num_threads(threads)
    {
        int32_t acc[16 * 16] __attribute__((aligned(64)));
        int configured_rows = -1;
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, Kp, xq + m * Kp, xs + m);
        /* (the implied barrier: every row is quantized before any tile reads it) */
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; g++) {
            const int64_t n0 = g * 64;
            const int8_t *bg = w + g * KB * GROUP_BYTES; /* one contiguous stream per group */
            int64_t m0 = 0;
            /* prompts (32 rows and more): 2 x 2 tiles per pass, two row blocks times two output blocks, so
               each tile loaded serves two products */
            for (; m0 + 32 <= M; m0 += 32) {
                if (configured_rows != 16) {
                    configure_tiles(16);
                    configured_rows = 16;
                }
                const int8_t *a0 = xq + m0 * Kp, *a1 = a0 + 16 * Kp;
                for (int jp = 0; jp < 4; jp += 2) {
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_zero(2);
                    _tile_zero(3);
                    const int8_t *b = bg + jp * 1024;
                    for (int64_t kb = 0; kb < KB; kb++, b += GROUP_BYTES) {
                        _tile_loadd(4, a0 + kb * 64, Kp);
                        _tile_loadd(5, a1 + kb * 64, Kp);
                        _tile_loadd(6, b, 64);
                        _tile_loadd(7, b + 1024, 64);
                        _tile_dpbssd(0, 4, 6);
                        _tile_dpbssd(1, 4, 7);
                        _tile_dpbssd(2, 5, 6);
                        _tile_dpbssd(3, 5, 7);
                    }
                    _tile_stored(0, acc, 64);
                    write_block(acc, 16, m0, n0 + jp * 16, N, xs, w_scale, bias, gelu, y);
                    _tile_stored(1, acc, 64);
                    write_block(acc, 16, m0, n0 + jp * 16 + 16, N, xs, w_scale, bias, gelu, y);
                    _tile_stored(2, acc, 64);
                    write_block(acc, 16, m0 + 16, n0 + jp * 16, N, xs, w_scale, bias, gelu, y);
                    _tile_stored(3, acc, 64);
                    write_block(acc, 16, m0 + 16, n0 + jp * 16 + 16, N, xs, w_scale, bias, gelu, y);
                }
            }
            /* decoding (up to 16 rows) and the rest of a prompt: one row block times four output blocks */
            for (; m0 < M; m0 += 16) {
                const int rows = (int)(M - m0 < 16 ? M - m0 : 16);
                if (rows != configured_rows) {
                    configure_tiles(rows);
                    configured_rows = rows;
                }
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                const int8_t *a = xq + m0 * Kp, *b = bg;
                for (int64_t kb = 0; kb < KB; kb++, b += GROUP_BYTES) {
#ifdef PREFETCH
                    for (int i = 0; i < GROUP_BYTES; i += 64) _mm_prefetch((const char *)b + PREFETCH + i, PREFETCH_HINT);
#endif
                    _tile_loadd(4, a + kb * 64, Kp);
                    _tile_loadd(5, b, 64);
                    _tile_dpbssd(0, 4, 5);
                    _tile_loadd(6, b + 1024, 64);
                    _tile_dpbssd(1, 4, 6);
                    _tile_loadd(7, b + 2048, 64);
                    _tile_dpbssd(2, 4, 7);
                    _tile_loadd(5, b + 3072, 64);
                    _tile_dpbssd(3, 4, 5);
                }
                _tile_stored(0, acc, 64);
                write_block(acc, rows, m0, n0, N, xs, w_scale, bias, gelu, y);
                _tile_stored(1, acc, 64);
                write_block(acc, rows, m0, n0 + 16, N, xs, w_scale, bias, gelu, y);
                _tile_stored(2, acc, 64);
                write_block(acc, rows, m0, n0 + 32, N, xs, w_scale, bias, gelu, y);
                _tile_stored(3, acc, 64);
                write_block(acc, rows, m0, n0 + 48, N, xs, w_scale, bias, gelu, y);
            }
        }
        if (configured_rows >= 0) _tile_release();
    }
}

#define MAX_D 256    /* head dim, a multiple of 32 */
#define MAX_S 4096   /* cached slots */

/* 32 bf16 (one 64-byte line) -> fp32 even elements (0, 2, ..) and odd elements (1, 3, ..), by shift and mask
   only: no shuffles, which would queue on the one port that also serves the reductions */
static inline __m512 bf16_even(__m512i w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }
static inline __m512 bf16_odd(__m512i w) { return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xFFFF0000))); }

/* One (row, head): write the new key and value at slot s, attend over slots 0..s. nd = D / 32; inlined with
   a constant nd for the common head sizes, so that the accumulators stay in registers. Vectors hold the even
   and odd elements of each 32-element chunk apart (see bf16_even); they are interleaved back at the end. */
static inline __attribute__((always_inline)) void attend_one(const float *q, const float *kn, const float *vn,
                                                             uint16_t *K, uint16_t *V, const uint8_t *ok,
                                                             int64_t s, const int nd, float scale, float *out) {
    const int64_t D = 32 * nd;
    float score[MAX_S] __attribute__((aligned(64)));
    __m512 qe[MAX_D / 32], qo[MAX_D / 32], oe[MAX_D / 32], oo[MAX_D / 32];
    const __m512i even_idx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd_idx = _mm512_add_epi32(even_idx, _mm512_set1_epi32(1));
    for (int j = 0; j < 2 * nd; j++) {
        _mm256_storeu_si256((__m256i *)(K + s * D + 16 * j), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(kn + 16 * j)));
        _mm256_storeu_si256((__m256i *)(V + s * D + 16 * j), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(vn + 16 * j)));
    }
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int j = 0; j < nd; j++) {
        __m512 a = _mm512_loadu_ps(q + 32 * j), b = _mm512_loadu_ps(q + 32 * j + 16);
        qe[j] = _mm512_mul_ps(_mm512_permutex2var_ps(a, even_idx, b), vscale);
        qo[j] = _mm512_mul_ps(_mm512_permutex2var_ps(a, odd_idx, b), vscale);
        oe[j] = oo[j] = _mm512_setzero_ps();
    }
    float mx = -INFINITY;
    for (int64_t t = 0; t <= s; t++) {
        if (t < s && !ok[t]) {
            score[t] = -INFINITY;
            continue;
        }
        /* the keys ahead, and this slot's values for the pass below (they then come from L1) */
        _mm_prefetch((const char *)(K + (t + 8) * D), _MM_HINT_T0);
        _mm_prefetch((const char *)(V + t * D), _MM_HINT_T0);
        if (nd > 1) {
            _mm_prefetch((const char *)(K + (t + 8) * D) + 64, _MM_HINT_T0);
            _mm_prefetch((const char *)(V + t * D) + 64, _MM_HINT_T0);
        }
        __m512 acc = _mm512_setzero_ps();
        for (int j = 0; j < nd; j++) {
            __m512i w = _mm512_loadu_si512(K + t * D + 32 * j);
            acc = _mm512_fmadd_ps(qe[j], bf16_even(w), acc);
            acc = _mm512_fmadd_ps(qo[j], bf16_odd(w), acc);
        }
        score[t] = _mm512_reduce_add_ps(acc);
        mx = score[t] > mx ? score[t] : mx; /* not fmaxf: its NaN rules cost a dependent chain */
    }
    __m512 vsum = _mm512_setzero_ps();
    const __m512 vmx = _mm512_set1_ps(mx), ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t t = 0; t <= s; t += 16) {
        __mmask16 in = (__mmask16)(s + 1 - t >= 16 ? 0xFFFF : (1u << (s + 1 - t)) - 1u);
        __m512 x = _mm512_mask_loadu_ps(ninf, in, score + t);
        __mmask16 real = _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_OQ); /* padding slots weigh exactly 0 */
        __m512 p = _mm512_maskz_mov_ps(real, exp_ps(_mm512_sub_ps(x, vmx)));
        _mm512_mask_storeu_ps(score + t, in, p);
        vsum = _mm512_add_ps(vsum, p);
    }
    for (int64_t t = 0; t <= s; t++) {
        if (score[t] == 0.f) continue; /* padding (its slot may hold anything) */
        __m512 p = _mm512_set1_ps(score[t]);
        for (int j = 0; j < nd; j++) {
            __m512i w = _mm512_loadu_si512(V + t * D + 32 * j);
            oe[j] = _mm512_fmadd_ps(p, bf16_even(w), oe[j]);
            oo[j] = _mm512_fmadd_ps(p, bf16_odd(w), oo[j]);
        }
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(vsum));
    const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(8));
    for (int j = 0; j < nd; j++) {
        _mm512_storeu_ps(out + 32 * j, _mm512_mul_ps(_mm512_permutex2var_ps(oe[j], lo_idx, oo[j]), inv));
        _mm512_storeu_ps(out + 32 * j + 16, _mm512_mul_ps(_mm512_permutex2var_ps(oe[j], hi_idx, oo[j]), inv));
    }
}

/* qkv [B, 3, H, D] fp32 (this step's q, k, v); kc, vc: one layer of the cache, [B, H, Smax, D] bf16;
   valid [B, Smax] (0: padding); s: the new token's slot (slots < s are cached); out [B, H, D] fp32. */
void biogpt_decode_attention(const float *qkv, int64_t B, int64_t H, int64_t D, uint16_t *kc, uint16_t *vc,
                             int64_t Smax, int64_t s, const uint8_t *valid, float *out, int threads) {
    const float scale = 1.f / sqrtf((float)D);
#pragma omp parallel num_threads(threads)
    {
        /* flush denormals (tiny softmax weights times small values) to zero: they would take the slow path */
        const unsigned int csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            const int64_t b = bh / H, h = bh % H;
            const float *q = qkv + (b * 3 * H + h) * D;
            uint16_t *K = kc + bh * Smax * D, *V = vc + bh * Smax * D;
            const uint8_t *ok = valid + b * Smax;
            if (D == 64)
                attend_one(q, q + H * D, q + 2 * H * D, K, V, ok, s, 2, scale, out + bh * D);
            else if (D == 128)
                attend_one(q, q + H * D, q + 2 * H * D, K, V, ok, s, 4, scale, out + bh * D);
            else
                attend_one(q, q + H * D, q + 2 * H * D, K, V, ok, s, (int)(D / 32), scale, out + bh * D);
        }
        _mm_setcsr(csr);
    }
}
