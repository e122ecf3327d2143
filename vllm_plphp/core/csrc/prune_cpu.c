/* PLPHP's per-layer prune work on vLLM's CPU_ATTN paged KV cache, in place:
 * one C call per pruned layer (plphp_prune_layer; plphp_scores then
 * plphp_compact under tensor parallelism) instead of ~50 small torch ops
 * (vllm_plphp/core/cpu_kernel.py builds and loads this file).
 *
 * Cache: (num_blocks, Hkv, bs, 2D) elements, per (block, head) a key tile
 * stored D-major (key of slot t, dim d at [d * bs + t]) then a value tile
 * (value of slot t at [bs * D + t * D + d]). Elements: float32 (esize 4) or
 * bfloat16 (esize 2). Position p of target b is slot p % bs of block
 * ids[b * M + p / bs].
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float load(const void *base, int64_t i, int esize) {
    if (esize == 4) return ((const float *)base)[i];
    uint32_t bits = (uint32_t)((const uint16_t *)base)[i] << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#define MAX_G 16

/* scores (B, Hkv, S) float32: softmax over positions < plens[b] of the G
 * query heads of each KV head, reduced by mean (reduce_max 0) or max; 0 at
 * positions >= plens[b]. gamma_sum (B,): sum over heads and vision positions
 * of the probabilities. work: at least G * S floats. Returns -1 if G > MAX_G. */
int plphp_scores(const float *q, const void *cache, int esize, const int64_t *ids,
                 int B, int H, int Hkv, int D, int bs, int M, int64_t sblock, int64_t shead,
                 const int32_t *plens, const int8_t *vision, int Pmax, float scale,
                 int reduce_max, float *scores, float *gamma_sum, float *work) {
    int G = H / Hkv, S = M * bs;
    if (G > MAX_G) return -1;
    for (int b = 0; b < B; b++) {
        int P = plens[b];
        float gsum = 0.0f;
        const int8_t *vis = vision + (int64_t)b * Pmax;
        for (int h = 0; h < Hkv; h++) {
            float *out = scores + ((int64_t)b * Hkv + h) * S;
            const float *qh = q + ((int64_t)b * H + h * G) * D;
            for (int i = 0; i < G * S; i++) work[i] = 0.0f;
            for (int m = 0; m * bs < P; m++) {  /* logits: each key row read once for the G heads */
                const char *tile = (const char *)cache + (ids[(int64_t)b * M + m] * sblock + h * shead) * esize;
                int n = P - m * bs < bs ? P - m * bs : bs;
                for (int d = 0; d < D; d++) {
                    float row[n > 0 ? n : 1];
                    if (esize == 4) memcpy(row, (const float *)tile + (int64_t)d * bs, n * sizeof(float));
                    else for (int t = 0; t < n; t++) row[t] = load(tile, (int64_t)d * bs + t, 2);
                    for (int g = 0; g < G; g++) {
                        float qd = qh[g * D + d];
                        float *w = work + (int64_t)g * S + m * bs;
                        for (int t = 0; t < n; t++) w[t] += qd * row[t];
                    }
                }
            }
            for (int p = 0; p < S; p++) out[p] = 0.0f;
            for (int g = 0; g < G; g++) {
                float *w = work + (int64_t)g * S;
                float mx = -INFINITY;
                for (int p = 0; p < P; p++) {
                    w[p] *= scale;
                    if (w[p] > mx) mx = w[p];
                }
                float sum = 0.0f;
                for (int p = 0; p < P; p++) {
                    w[p] = expf(w[p] - mx);
                    sum += w[p];
                }
                float inv = 1.0f / sum;
                for (int p = 0; p < P; p++) {
                    float pr = w[p] * inv;
                    if (p < Pmax && vis[p]) gsum += pr;
                    if (reduce_max) { if (pr > out[p]) out[p] = pr; }
                    else out[p] += pr;
                }
            }
            if (!reduce_max)
                for (int p = 0; p < P; p++) out[p] /= (float)G;
        }
        gamma_sum[b] = gsum;
    }
    return 0;
}

/* The k-th largest of v[0..n) (1 <= k <= n); reorders v. */
static float kth_largest(float *v, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot) i++;
            while (v[j] < pivot) j--;
            if (i <= j) { float t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return v[want];
    }
    return v[want];
}

static int ascending(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Marks in mask the k highest-scoring of the n positions pj (ties: the lower
 * positions). buf: n floats; ties: n int64. */
static void mark_top(uint8_t *mask, const float *sc, const int64_t *pj, int n, int k,
                     float *buf, int64_t *ties) {
    if (k <= 0) return;
    if (k >= n) { for (int i = 0; i < n; i++) mask[pj[i]] = 1; return; }
    for (int i = 0; i < n; i++) buf[i] = sc[pj[i]];
    float v = kth_largest(buf, n, k);
    int above = 0, tied = 0;
    for (int i = 0; i < n; i++) {
        float x = sc[pj[i]];
        if (x > v) { mask[pj[i]] = 1; above++; }
        else if (x == v) ties[tied++] = pj[i];
    }
    int need = k - above;
    if (need < tied) qsort(ties, tied, sizeof(int64_t), ascending);
    for (int i = 0; i < need && i < tied; i++) mask[ties[i]] = 1;
}

/* Per target b and KV head h: keep the positions < tlens[b] that are not
 * vision (base[b, p]) and, of each image j, the kept[b, j] highest-scoring
 * positions (pos[b, j, :sizes[b, j]]); move the kept entries, ascending, to
 * slots 0..L-1 (in place: the i-th kept position is never below i).
 * keep_out (B, Hkv, Lbound) or NULL: the kept positions, -1 past L.
 * lengths (B,): L. mask: Tmax bytes; buf: Smax floats; ties: max(Smax, Tmax)
 * int64; offs: 4 Tmax int64. */
void plphp_compact(void *cache, int esize, const int64_t *ids, int B, int Hkv, int D, int bs, int M,
                   int64_t sblock, int64_t shead, const float *scores, const int64_t *pos,
                   const int64_t *sizes, int J, int Smax, const int64_t *kept, const int64_t *tlens,
                   const uint8_t *base, int Tmax, int64_t *keep_out, int Lbound, int64_t *lengths,
                   uint8_t *mask, float *buf, int64_t *ties, int64_t *offs) {
    int S = M * bs;
    for (int b = 0; b < B; b++) {
        int T = (int)tlens[b];
        for (int h = 0; h < Hkv; h++) {
            const float *sc = scores + ((int64_t)b * Hkv + h) * S;
            memcpy(mask, base + (int64_t)b * Tmax, T);
            for (int j = 0; j < J; j++) {
                int n = (int)sizes[(int64_t)b * J + j];
                int k = (int)kept[(int64_t)b * J + j];
                mark_top(mask, sc, pos + ((int64_t)b * J + j) * Smax, n, k, buf, ties);
            }
            int64_t *ko = keep_out ? keep_out + ((int64_t)b * Hkv + h) * Lbound : NULL;
            int L = 0;
            for (int p = 0; p < T; p++)
                if (mask[p]) ties[L++] = p;  /* ties: reused for the kept positions, ascending */
            /* In place, ascending: the i-th kept position is never below i, so a
             * slot is written only after its own entry has moved. offs, per
             * moved entry: source tile offset and slot, destination tile
             * offset and slot. Keys row by row of the D-major tiles, values
             * entry by entry (slot t's value: bs * D + t * D into the tile). */
            int moved = 0;
            for (int i = 0; i < L; i++) {
                int64_t p = ties[i], *o = offs + 4 * moved;
                if (p == i) continue;
                o[0] = ids[(int64_t)b * M + p / bs] * sblock + h * shead;
                o[1] = p % bs;
                o[2] = ids[(int64_t)b * M + i / bs] * sblock + h * shead;
                o[3] = i % bs;
                moved++;
            }
            for (int d = 0; d < D; d++) {
                int64_t row = (int64_t)d * bs;
                if (esize == 4) {
                    float *c = (float *)cache;
                    for (const int64_t *o = offs; o < offs + 4 * moved; o += 4)
                        c[o[2] + row + o[3]] = c[o[0] + row + o[1]];
                } else {
                    uint16_t *c = (uint16_t *)cache;
                    for (const int64_t *o = offs; o < offs + 4 * moved; o += 4)
                        c[o[2] + row + o[3]] = c[o[0] + row + o[1]];
                }
            }
            for (const int64_t *o = offs; o < offs + 4 * moved; o += 4)
                memcpy((char *)cache + (o[2] + (int64_t)bs * D + o[3] * D) * esize,
                       (const char *)cache + (o[0] + (int64_t)bs * D + o[1] * D) * esize, (size_t)D * esize);
            if (ko) {
                for (int i = 0; i < L && i < Lbound; i++) ko[i] = ties[i];
                for (int i = L; i < Lbound; i++) ko[i] = -1;
            }
            if (h == 0) lengths[b] = L;
        }
    }
}

/* One pruned layer in one call, for a single rank (no all-reduce of gamma
 * between the two steps): block ids from the block table (rows of tstride
 * int32; target b's row trows[b], its columns cols[b, :M]), queries from rows qrows[b] of
 * q (rows of qstride floats, H * D each), plphp_scores, gamma_l = gamma_sum /
 * heads_total (float32), r_l and K_j in float64 by the rule of
 * vllm_plphp.gpu.ops.rate_rule and gpu.select.kept_rule (params (B, 4): r,
 * delta_r, alpha, beta), then plphp_compact. Outputs lengths, gammas, rates
 * (B,). Scratch: ids B * M int64, qbuf B * H * D floats, kept B * J int64,
 * and those of the two calls. Returns plphp_scores' code. The arguments
 * after `rates` are the same for every layer of a step (the caller builds
 * them once). */
int plphp_prune_layer(const float *q, void *cache, const int32_t *table, int64_t tstride,
                      int64_t sblock, int64_t shead, int64_t *keep_out, int64_t *lengths,
                      float *gammas, double *rates,
                      /* the same for every layer of the step: */
                      int64_t qstride, const int64_t *qrows, const int64_t *trows, int esize,
                      const int64_t *cols,
                      int B, int H, int Hkv, int D, int bs, int M,
                      const int32_t *plens, const int8_t *vision, int Pmax, float scale, int reduce_max,
                      int heads_total, const double *params, const int64_t *pos, const int64_t *sizes,
                      int J, int Smax, const int64_t *tlens, const uint8_t *base, int Tmax, int Lbound,
                      int64_t *ids, float *qbuf, int64_t *kept, float *scores, float *work,
                      uint8_t *mask, float *buf, int64_t *ties, int64_t *offs) {
    for (int b = 0; b < B; b++) {
        for (int m = 0; m < M; m++)
            ids[(int64_t)b * M + m] = table[trows[b] * tstride + cols[(int64_t)b * M + m]];
        memcpy(qbuf + (int64_t)b * H * D, q + qrows[b] * qstride, (size_t)H * D * sizeof(float));
    }
    int rc = plphp_scores(qbuf, cache, esize, ids, B, H, Hkv, D, bs, M, sblock, shead, plens, vision,
                          Pmax, scale, reduce_max, scores, gammas, work);
    if (rc != 0) return rc;
    for (int b = 0; b < B; b++) {
        float g = gammas[b] / (float)heads_total;
        gammas[b] = g;
        const double *p = params + (int64_t)b * 4;
        double r = (double)g >= p[2] ? p[0] + p[1] : ((double)g < p[3] ? p[0] - p[1] : p[0]);
        rates[b] = r;
        for (int j = 0; j < J; j++) {
            double s = (double)sizes[(int64_t)b * J + j];
            double k = floor(r * s + 1e-6);
            if (k < 1.0) k = 1.0;
            if (k > s) k = s;
            kept[(int64_t)b * J + j] = (int64_t)k;
        }
    }
    plphp_compact(cache, esize, ids, B, Hkv, D, bs, M, sblock, shead, scores, pos, sizes, J, Smax, kept,
                  tlens, base, Tmax, keep_out, Lbound, lengths, mask, buf, ties, offs);
    return 0;
}
