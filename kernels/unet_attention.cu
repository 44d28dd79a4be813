// The UNet's attention, softmax(QᵀK·scale)·V per head, on the internal layout: q, k and v
// point at the first row of their operands, each [heads·dh][b·t] (t tokens per sample: tq for
// q, tk for k and v), and out is [heads·dh][b·tq]. Three ways, chosen by
// src/cuda/unet/backend.rs: the column softmax between two GEMMs (the scores in memory), a
// fused f32 kernel, and fused tensor-core kernels for bf16 and f16 math and for TF32 math. CPU
// counterpart: src/cpu/attention.rs.
#include "common.cuh"

#define RD_ATTN_THREADS 256

// Softmax over the keys of attention scores stored key-major: s is [mats][keys][queries]
// (S transposed, as the QKᵀ GEMM writes it), and each query's scores form a column. One
// thread per (matrix, query), three passes down its column: at every step the threads of a
// warp read consecutive queries, so each access is coalesced, and no barrier is needed.
extern "C" __global__ void __launch_bounds__(RD_ATTN_THREADS)
    rdiff_unet_softmax_cols_f32(float* __restrict__ s, rd_i64 mats, rd_i64 keys,
                                rd_i64 queries) {
    const rd_i64 total = mats * queries;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        float* col = s + (e / queries) * keys * queries + e % queries;
        float m = -3.402823466e38f;
        for (rd_i64 j = 0; j < keys; ++j) m = fmaxf(m, col[j * queries]);
        float z = 0.0f;
        for (rd_i64 j = 0; j < keys; ++j) {
            const float v = expf(col[j * queries] - m);
            col[j * queries] = v;
            z += v;
        }
        const float inv = 1.0f / z;
        for (rd_i64 j = 0; j < keys; ++j) col[j * queries] *= inv;
    }
}
RDIFF_HOST_EXPORT(rdiff_unet_softmax_cols_f32)

// Fused multi-head attention, flash style: softmax(QᵀK·scale)·V without the score matrix in
// memory. q, k, v point at the first row of their operands, each [heads·dh][b·t] (t tokens per
// sample: tq for q, tk for k and v); out is [heads·dh][b·tq]. blockIdx.y = sample·heads + head;
// each block (at most RD_ATTN_THREADS threads) takes blockDim.x / RD_ATTN_LANES queries,
// RD_ATTN_LANES threads per query, each thread owning the dims d ≡ its lane (mod
// RD_ATTN_LANES), so dh ≤ RD_ATTN_LANES · RD_ATTN_PER (256). Keys and values come through
// shared memory in tiles of RD_ATTN_TILE (= RD_ATTN_LANES) keys. Per tile each lane forms its
// partial dot products with every key of the tile; lane L then sums the partials of key L
// (through shared memory: block barriers, no warp shuffles), and the running max, sum and
// accumulators are rescaled once per tile (online softmax), all in f32.
#define RD_ATTN_LANES 16
#define RD_ATTN_PER 16
#define RD_ATTN_TILE RD_ATTN_LANES
#define RD_ATTN_DMAX (RD_ATTN_LANES * RD_ATTN_PER)
#define RD_ATTN_QMAX (RD_ATTN_THREADS / RD_ATTN_LANES)
// (min blocks 1: NVRTC 13.0's ptxas otherwise capped sm_80 at 80 registers and spilled)
extern "C" __global__ void __launch_bounds__(RD_ATTN_THREADS, 1)
    rdiff_unet_flash_attention_f32(const float* __restrict__ q, const float* __restrict__ k,
                                   const float* __restrict__ v, rd_i64 heads, rd_i64 dh,
                                   rd_i64 b, rd_i64 tq, rd_i64 tk, float scale,
                                   float* __restrict__ out) {
    RDIFF_SHARED(float, ks, RD_ATTN_TILE * RD_ATTN_DMAX);
    RDIFF_SHARED(float, vs, RD_ATTN_TILE * RD_ATTN_DMAX);
    // Partial scores: [query in block][key][lane]; after the reduction [.][key][0] holds the
    // key's score.
    RDIFF_SHARED(float, sp, RD_ATTN_QMAX * RD_ATTN_TILE * RD_ATTN_LANES);
    const rd_i64 sample = blockIdx.y / heads, head = blockIdx.y % heads;
    const rd_i64 nq = b * tq, nk = b * tk;
    const int lane = (int)(threadIdx.x % RD_ATTN_LANES), dhi = (int)dh;
    const int ql = (int)(threadIdx.x / RD_ATTN_LANES);
    const rd_i64 per_block = blockDim.x / RD_ATTN_LANES;
    const rd_i64 i = (rd_i64)blockIdx.x * per_block + ql;
    const bool valid = i < tq;
    float* spq = sp + ql * RD_ATTN_TILE * RD_ATTN_LANES;
    const float* qh = q + head * dh * nq + sample * tq;
    const float* kh = k + head * dh * nk + sample * tk;
    const float* vh = v + head * dh * nk + sample * tk;
    float qr[RD_ATTN_PER], acc[RD_ATTN_PER];
#pragma unroll
    for (int u = 0; u < RD_ATTN_PER; ++u) {
        const int d = lane + u * RD_ATTN_LANES;
        qr[u] = (valid && d < dhi) ? qh[(rd_i64)d * nq + i] * scale : 0.0f;
        acc[u] = 0.0f;
    }
    float m = -3.402823466e38f, l = 0.0f;
    for (rd_i64 j0 = 0; j0 < tk; j0 += RD_ATTN_TILE) {
        const int nt = (int)(tk - j0 < RD_ATTN_TILE ? tk - j0 : RD_ATTN_TILE);
        __syncthreads();  // the previous tile is consumed
        for (int e = (int)threadIdx.x; e < RD_ATTN_TILE * dhi; e += (int)blockDim.x) {
            const int d = e / RD_ATTN_TILE, jj = e % RD_ATTN_TILE;
            const bool in = jj < nt;
            ks[jj * RD_ATTN_DMAX + d] = in ? kh[(rd_i64)d * nk + j0 + jj] : 0.0f;
            vs[jj * RD_ATTN_DMAX + d] = in ? vh[(rd_i64)d * nk + j0 + jj] : 0.0f;
        }
        __syncthreads();
#pragma unroll 1
        for (int jj = 0; jj < RD_ATTN_TILE; ++jj) {
            float p = 0.0f;
#pragma unroll
            for (int u = 0; u < RD_ATTN_PER; ++u) {
                const int d = lane + u * RD_ATTN_LANES;
                if (d < dhi) p += qr[u] * ks[jj * RD_ATTN_DMAX + d];
            }
            spq[jj * RD_ATTN_LANES + lane] = p;
        }
        __syncthreads();
        {
            // Lane L sums key L's partials in place (it alone reads and writes that row).
            float sum = 0.0f;
#pragma unroll
            for (int w = 0; w < RD_ATTN_LANES; ++w) sum += spq[lane * RD_ATTN_LANES + w];
            spq[lane * RD_ATTN_LANES] = lane < nt ? sum : -3.402823466e38f;
        }
        __syncthreads();
        float tmax = -3.402823466e38f;
#pragma unroll 1
        for (int jj = 0; jj < nt; ++jj) tmax = fmaxf(tmax, spq[jj * RD_ATTN_LANES]);
        const float mnew = fmaxf(m, tmax);
        const float corr = expf(m - mnew);
        l *= corr;
#pragma unroll
        for (int u = 0; u < RD_ATTN_PER; ++u) acc[u] *= corr;
#pragma unroll 1
        for (int jj = 0; jj < nt; ++jj) {
            const float e = expf(spq[jj * RD_ATTN_LANES] - mnew);
            l += e;
#pragma unroll
            for (int u = 0; u < RD_ATTN_PER; ++u) {
                const int d = lane + u * RD_ATTN_LANES;
                if (d < dhi) acc[u] += e * vs[jj * RD_ATTN_DMAX + d];
            }
        }
        m = mnew;
    }
    if (!valid) return;
    const float inv = 1.0f / l;
    float* oh = out + head * dh * nq + sample * tq;
#pragma unroll
    for (int u = 0; u < RD_ATTN_PER; ++u) {
        const int d = lane + u * RD_ATTN_LANES;
        if (d < dhi) oh[(rd_i64)d * nq + i] = acc[u] * inv;
    }
}
RDIFF_HOST_EXPORT(rdiff_unet_flash_attention_f32)

// Fused attention on tensor cores for bf16 and f16 math (flash attention 2's scheme): Q, K, V
// and the probabilities rounded to T (rd_bf16 or rd_f16), the scores, the online softmax and
// every sum in f32. Block: RD_MMA_WARPS warps of 16 queries each, blockIdx.x the block of
// RD_MMA_Q queries, blockIdx.y = sample·heads + head. dh ≤ D (64, 128 or 160: one entry point
// each, so that SD's 40- and 64-wide heads keep half the registers; SD 1.5's widest are 160),
// padded with zeros to dp, a multiple of 16. Each warp keeps its queries' fragments and its
// 16×dp output in registers; per tile of RD_MMA_KT keys, the block stages K as [key][d] and V
// as [d][key] in shared memory (rows padded by 8 halves, so a fragment's 32 words fall in 32
// banks); each warp forms its 16×64 scores (S = QKᵀ, dp/16 · 8 products), rescales its
// running max, sum and output once, and adds P·V (4 · dp/8 products), P taken straight from
// the scores' registers: an accumulator tile pair is the next product's A fragment.
#define RD_MMA_WARPS 4
#define RD_MMA_Q (16 * RD_MMA_WARPS)
#define RD_MMA_KT 64
// Row stride of the staged V tile, in 32-bit words (two halves each).
#define RD_MMA_VW ((RD_MMA_KT + 8) / 2)

// Where a tensor-core kernel's lane works: its place in its warp's fragments (g = lane / 4,
// t = lane % 4), its head's operands and output from its sample's first token (rows nq or nk
// apart) and its first query row (the second is row0 + 8).
struct rd_mma_at {
    int g, t;
    rd_i64 nq, nk, row0;
    const float *q, *k, *v;
    float* out;
};
RD_DEV rd_mma_at rd_mma_locate(const float* q, const float* k, const float* v, float* out,
                               rd_i64 heads, rd_i64 dh, rd_i64 b, rd_i64 tq, rd_i64 tk) {
    const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31u);
    const rd_i64 sample = blockIdx.y / heads, head = blockIdx.y % heads;
    rd_mma_at p;
    p.g = lane >> 2;
    p.t = lane & 3;
    p.nq = b * tq;
    p.nk = b * tk;
    p.row0 = (rd_i64)blockIdx.x * RD_MMA_Q + warp * 16 + p.g;
    p.q = q + head * dh * p.nq + sample * tq;
    p.k = k + head * dh * p.nk + sample * tk;
    p.v = v + head * dh * p.nk + sample * tk;
    p.out = out + head * dh * p.nq + sample * tq;
    return p;
}

// The tensor-core kernels' online softmax, per warp: 16 query rows (g and g + 8 in each lane's
// group of 4), their scores s for one tile of NS·8 keys in the accumulator layout (s[n][e]: row
// g + 8·(e / 2), key 8n + 2t + e mod 2), and an output o of NO tiles of 8 dims in the same
// layout. Scales s into the log2 domain (sl2), masks the keys from nt on, raises the rows'
// maxima m and rescales their sums l and o by exp2(old − new).
template <int NS, int NO>
RD_DEV void rd_mma_rescale(float (*s)[4], float* m, float* l, float (*o)[4], int nt, int t,
                           float sl2) {
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const bool in = n * 8 + 2 * t + (e & 1) < nt;
            s[n][e] = in ? s[n][e] * sl2 : -3.402823466e38f;
            mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
        }
    }
    // (each row's scores lie in the 4 lanes of its group)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float corr = exp2f(m[r] - mx[r]);
        m[r] = mx[r];
        l[r] *= corr;
#pragma unroll
        for (int n = 0; n < NO; ++n) {
            o[n][2 * r] *= corr;
            o[n][2 * r + 1] *= corr;
        }
    }
}

// The tensor-core kernels' last step: each row's output o (NO tiles of 8 dims, as
// rd_mma_rescale's) divided by its sum l (a quarter of it in each lane of the row's group),
// dims below dhi and rows below tq stored into oh ([dh][nq], row0 the lane's first row).
template <int NO>
RD_DEV void rd_mma_store(float (*o)[4], float* l, float* __restrict__ oh, rd_i64 row0, int t,
                         int dhi, rd_i64 tq, rd_i64 nq) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        l[r] = 1.0f / l[r];
    }
#pragma unroll
    for (int n = 0; n < NO; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const rd_i64 row = row0 + (e >> 1) * 8;
            const int d = n * 8 + 2 * t + (e & 1);
            if (d < dhi && row < tq) oh[(rd_i64)d * nq + row] = o[n][e] * l[e >> 1];
        }
    }
}

template <class T, int D>
RD_DEV void rd_attention_mma(const float* __restrict__ q, const float* __restrict__ k,
                             const float* __restrict__ v, rd_i64 heads, rd_i64 dh, rd_i64 b,
                             rd_i64 tq, rd_i64 tk, float scale, float* __restrict__ out) {
    constexpr int KW = (D + 8) / 2;  // K's row stride in words
    RDIFF_SHARED(unsigned int, ks, RD_MMA_KT * KW);   // [key][d pair]
    RDIFF_SHARED(unsigned int, vs, D * RD_MMA_VW);    // [d][key pair]
    const T tag = {};
    const int dhi = (int)dh, dp = (dhi + 15) & ~15;
    const rd_mma_at place = rd_mma_locate(q, k, v, out, heads, dh, b, tq, tk);
    const int g = place.g, t = place.t;
    const rd_i64 nq = place.nq, nk = place.nk, row0 = place.row0;
    const float *qh = place.q, *kh = place.k, *vh = place.v;
    // The warp's queries as A fragments, a chunk of 16 dims each.
    unsigned int qa[D / 16][4];
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const rd_i64 row = row0 + (w & 1) * 8;
            const int d = c * 16 + (w >> 1) * 8 + 2 * t;
            const bool in = c * 16 < dp && row < tq;
            const float x = in && d < dhi ? qh[(rd_i64)d * nq + row] : 0.0f;
            const float y = in && d + 1 < dhi ? qh[(rd_i64)(d + 1) * nq + row] : 0.0f;
            qa[c][w] = rd_pack16(tag, x, y);
        }
    }
    // Scores in the log2 domain: exp2(s·scale·log2 e − m) = exp(s·scale − m·ln 2).
    const float sl2 = scale * 1.4426950408889634f;
    float m[2] = {-3.402823466e38f, -3.402823466e38f}, l[2] = {0.0f, 0.0f};
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    for (rd_i64 j0 = 0; j0 < tk; j0 += RD_MMA_KT) {
        const int nt = (int)(tk - j0 < RD_MMA_KT ? tk - j0 : RD_MMA_KT);
        __syncthreads();  // the previous tile is consumed
        // K: a warp takes 8 keys × 4 pairs of dims (its stores then fall in 32 banks; each
        // dim's 8 keys are one 32-byte sector), the dp/2 pairs in blocks of 4.
        for (int e = (int)threadIdx.x; e < RD_MMA_KT * (dp / 2); e += (int)blockDim.x) {
            const int blk = e >> 5, el = e & 31;  // (el: the lane; l is the row sums)
            const int jj = (blk % (RD_MMA_KT / 8)) * 8 + (el >> 2);
            const int d = 2 * ((blk / (RD_MMA_KT / 8)) * 4 + (el & 3));
            const bool in = jj < nt;
            const float* at = kh + (rd_i64)d * nk + j0 + jj;
            const float x = in && d < dhi ? at[0] : 0.0f;
            const float y = in && d + 1 < dhi ? at[nk] : 0.0f;
            ks[jj * KW + d / 2] = rd_pack16(tag, x, y);
        }
        // V: consecutive threads read consecutive pairs of keys of one dim.
        for (int e = (int)threadIdx.x; e < dp * (RD_MMA_KT / 2); e += (int)blockDim.x) {
            const int jp = e % (RD_MMA_KT / 2), d = e / (RD_MMA_KT / 2);
            const bool in = d < dhi;
            const float* at = vh + (rd_i64)d * nk + j0 + 2 * jp;
            const float x = in && 2 * jp < nt ? at[0] : 0.0f;
            const float y = in && 2 * jp + 1 < nt ? at[1] : 0.0f;
            vs[d * RD_MMA_VW + jp] = rd_pack16(tag, x, y);
        }
        __syncthreads();
        // S = Q·Kᵀ: 8 tiles of 8 keys (a last tile's empty ones skipped: masked below).
        float s[RD_MMA_KT / 8][4];
#pragma unroll
        for (int n = 0; n < RD_MMA_KT / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const unsigned int* kr = ks + (n * 8 + g) * KW + t;
#pragma unroll
            for (int c = 0; c < D / 16; ++c) {
                if (c * 16 < dp && n * 8 < nt) {
                    const unsigned int kb[2] = {kr[c * 8], kr[c * 8 + 4]};
                    rd_mma_16816(tag, s[n], qa[c], kb);
                }
            }
        }
        rd_mma_rescale<RD_MMA_KT / 8, D / 8>(s, m, l, o, nt, t, sl2);
        // P = exp2(S − m) in T, as A fragments of 16 keys; l sums the rounded values, so the
        // weights the output divides by are the ones it multiplied.
        unsigned int pa[RD_MMA_KT / 16][4];
#pragma unroll
        for (int n = 0; n < RD_MMA_KT / 8; ++n) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const float p0 = exp2f(s[n][2 * r] - m[r]), p1 = exp2f(s[n][2 * r + 1] - m[r]);
                const unsigned int w = rd_pack16(tag, p0, p1);
                l[r] += rd_to_f32(T{(unsigned short)(w & 0xffffu)}) +
                        rd_to_f32(T{(unsigned short)(w >> 16)});
                pa[n >> 1][(n & 1) * 2 + r] = w;
            }
        }
        // O += P·V, 8 dims at a time.
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            if (n * 8 < dp) {
                const unsigned int* vr = vs + (n * 8 + g) * RD_MMA_VW + t;
#pragma unroll
                for (int c = 0; c < RD_MMA_KT / 16; ++c) {
                    if (c * 16 < nt) {  // (a last tile's keys past nt have p = 0)
                        const unsigned int vb[2] = {vr[c * 8], vr[c * 8 + 4]};
                        rd_mma_16816(tag, o[n], pa[c], vb);
                    }
                }
            }
        }
    }
    rd_mma_store<D / 8>(o, l, place.out, row0, t, dhi, tq, nq);
}

// One entry point of the tensor-core kernels: rdiff_unet_attention_mma_<suffix> calls the
// instance named after it.
#define RD_ATTENTION_MMA(suffix, ...)                                                        \
    extern "C" __global__ void __launch_bounds__(RD_MMA_WARPS * 32, 1)                       \
        rdiff_unet_attention_mma_##suffix(const float* __restrict__ q,                       \
                                          const float* __restrict__ k,                       \
                                          const float* __restrict__ v, rd_i64 heads,         \
                                          rd_i64 dh, rd_i64 b, rd_i64 tq, rd_i64 tk,         \
                                          float scale, float* __restrict__ out) {            \
        __VA_ARGS__(q, k, v, heads, dh, b, tq, tk, scale, out);                              \
    }                                                                                        \
    RDIFF_HOST_EXPORT(rdiff_unet_attention_mma_##suffix)
RD_ATTENTION_MMA(bf16_d64, rd_attention_mma<rd_bf16, 64>)
RD_ATTENTION_MMA(bf16_d128, rd_attention_mma<rd_bf16, 128>)
RD_ATTENTION_MMA(bf16_d160, rd_attention_mma<rd_bf16, 160>)
RD_ATTENTION_MMA(f16_d64, rd_attention_mma<rd_f16, 64>)
RD_ATTENTION_MMA(f16_d128, rd_attention_mma<rd_f16, 128>)
RD_ATTENTION_MMA(f16_d160, rd_attention_mma<rd_f16, 160>)

// Fused attention on the TF32 tensor cores: in TF32 math (compute_dtype="tfloat32"), and in
// float32 math with every operand split in two (SPLIT, "3xTF32": x = hi + lo, both tf32, and
// each product a·b as hi·hi + hi·lo + lo·hi, so f32's accuracy to about 2^-21 at three times
// the products; heads up to 64 wide, so that both halves of the queries fit in registers).
// The scheme above with mma.sync m16n8k8 on f32 words, Q, K, V and the probabilities rounded
// to tf32 (to nearest, as cvt.rna does; the cores would truncate), everything else f32. Same
// blocks and warps; dh ≤ D (64, 128 or 160), padded with zeros to dp, a multiple of 8; tiles
// of KT keys, 32 or (D = 160) 16: K and V at f32 take twice the 16-bit kernel's shared memory
// per key, 40 KiB at D = 128 (or D = 64 split) and 30 KiB at D = 160. K and V are staged as
// [d][key], straight copies of their [dh][tokens] rows, V as pairs of keys; rows KT + 8 words
// apart (40 or 24: 8 or 24 mod 32), so a fragment's 32 words (K) or a half-warp's 16 pairs
// (V) fall in distinct banks. A P fragment's columns are keys 2t and 2t + 1 (its
// accumulator's), not t and t + 4 as the product expects: the sum over keys does not care
// which of its 8 keys a column k stands for, so V's fragment reads keys in the same order
// (k = t: key 2t, k = t + 4: key 2t + 1), one pair a lane.

// x's tf32 rounding (hi) and, when split, the rounding of what it leaves (lo), as words.
template <bool SPLIT>
RD_DEV void rd_tf32_parts(float x, unsigned int* hi, unsigned int* lo) {
    const float h = rd_round_tf32(x);
    *hi = rd_f2u(h);
    if (SPLIT) *lo = rd_f2u(rd_round_tf32(x - h));
}

// c += a·b on the TF32 cores, or (split) a·b's three leading parts, the small ones first.
template <bool SPLIT>
RD_DEV void rd_mma_tf32_parts(float* c, const unsigned int* a, const unsigned int* al,
                              const unsigned int* b, const unsigned int* bl) {
    if (SPLIT) {
        rd_mma_1688_tf32(c, a, bl);
        rd_mma_1688_tf32(c, al, b);
    }
    rd_mma_1688_tf32(c, a, b);
}

template <int D, bool SPLIT, int KT>
RD_DEV void rd_attention_tf32(const float* __restrict__ q, const float* __restrict__ k,
                              const float* __restrict__ v, rd_i64 heads, rd_i64 dh, rd_i64 b,
                              rd_i64 tq, rd_i64 tk, float scale, float* __restrict__ out) {
    constexpr int P = SPLIT ? 2 : 1;              // parts of each staged value: hi, then lo
    constexpr int KW = KT + 8, VW = KT / 2 + 4;  // row strides: words (K), key pairs (V)
    RDIFF_SHARED(unsigned int, ks, P * D * KW);  // [part][d][key]
    RDIFF_SHARED(rd_u2, vs, P * D * VW);         // [part][d][key pair]
    constexpr int KL = D * KW, VL = D * VW;      // (lo's offsets)
    const int dhi = (int)dh, dp = (dhi + 7) & ~7;
    const rd_mma_at place = rd_mma_locate(q, k, v, out, heads, dh, b, tq, tk);
    const int g = place.g, t = place.t;
    const rd_i64 nq = place.nq, nk = place.nk, row0 = place.row0;
    const float *qh = place.q, *kh = place.k, *vh = place.v;
    // The warp's queries as A fragments, a chunk of 8 dims each (and their lo parts).
    unsigned int qa[D / 8][4], ql[SPLIT ? D / 8 : 1][4];
#pragma unroll
    for (int c = 0; c < D / 8; ++c) {
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const rd_i64 row = row0 + (w & 1) * 8;
            const int d = c * 8 + (w >> 1) * 4 + t;
            const float x = d < dhi && row < tq ? qh[(rd_i64)d * nq + row] : 0.0f;
            rd_tf32_parts<SPLIT>(x, &qa[c][w], &ql[SPLIT ? c : 0][w]);
        }
    }
    const float sl2 = scale * 1.4426950408889634f;
    float m[2] = {-3.402823466e38f, -3.402823466e38f}, l[2] = {0.0f, 0.0f};
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    for (rd_i64 j0 = 0; j0 < tk; j0 += KT) {
        const int nt = (int)(tk - j0 < KT ? tk - j0 : KT);
        __syncthreads();  // the previous tile is consumed
        // Consecutive threads copy consecutive keys (pairs of keys for V) of one dim.
        for (int e = (int)threadIdx.x; e < dp * KT; e += (int)blockDim.x) {
            const int jj = e % KT, d = e / KT;
            const float x = jj < nt && d < dhi ? kh[(rd_i64)d * nk + j0 + jj] : 0.0f;
            unsigned int* at = ks + d * KW + jj;
            rd_tf32_parts<SPLIT>(x, at, at + (SPLIT ? KL : 0));
        }
        for (int e = (int)threadIdx.x; e < dp * (KT / 2); e += (int)blockDim.x) {
            const int jp = e % (KT / 2), d = e / (KT / 2);
            const bool in = d < dhi;
            const float* at = vh + (rd_i64)d * nk + j0 + 2 * jp;
            const float x = in && 2 * jp < nt ? at[0] : 0.0f;
            const float y = in && 2 * jp + 1 < nt ? at[1] : 0.0f;
            rd_u2 h, lo;
            rd_tf32_parts<SPLIT>(x, &h.x, &lo.x);
            rd_tf32_parts<SPLIT>(y, &h.y, &lo.y);
            vs[d * VW + jp] = h;
            if (SPLIT) vs[VL + d * VW + jp] = lo;
        }
        __syncthreads();
        // S = Q·Kᵀ: KT / 8 tiles of 8 keys (a last tile's empty ones skipped: masked below).
        float s[KT / 8][4];
#pragma unroll
        for (int n = 0; n < KT / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            // B[k][n'] = K[key 8n + n'][dim 8c + k]: lane (g, t) reads key 8n + g, dims t, t + 4
            const unsigned int* kr = ks + t * KW + n * 8 + g;
#pragma unroll
            for (int c = 0; c < D / 8; ++c) {
                if (c * 8 < dp && n * 8 < nt) {
                    const unsigned int* at = kr + c * 8 * KW;
                    const unsigned int kb[2] = {at[0], at[4 * KW]};
                    unsigned int kl[2] = {0u, 0u};
                    if (SPLIT) {
                        kl[0] = at[KL];
                        kl[1] = at[KL + 4 * KW];
                    }
                    rd_mma_tf32_parts<SPLIT>(s[n], qa[c], ql[SPLIT ? c : 0], kb, kl);
                }
            }
        }
        rd_mma_rescale<KT / 8, D / 8>(s, m, l, o, nt, t, sl2);
        // P = exp2(S − m) in tf32 (split: hi and lo), as A fragments of 8 keys (column t: key
        // 2t, t + 4: 2t + 1); l sums the values the products use (split: the unrounded ones,
        // which hi + lo carry to about 2^-22).
        unsigned int pa[KT / 8][4], pl[SPLIT ? KT / 8 : 1][4];
#pragma unroll
        for (int n = 0; n < KT / 8; ++n) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const float p0 = exp2f(s[n][2 * r] - m[r]), p1 = exp2f(s[n][2 * r + 1] - m[r]);
                unsigned int* lo = pl[SPLIT ? n : 0];
                rd_tf32_parts<SPLIT>(p0, &pa[n][r], &lo[r]);
                rd_tf32_parts<SPLIT>(p1, &pa[n][2 + r], &lo[2 + r]);
                l[r] += SPLIT ? p0 + p1 : rd_u2f(pa[n][r]) + rd_u2f(pa[n][2 + r]);
            }
        }
        // O += P·V, 8 dims at a time: lane (g, t) reads dim 8i + g's keys 8n + 2t, 8n + 2t + 1.
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
            if (i * 8 < dp) {
                const rd_u2* vr = vs + (i * 8 + g) * VW + t;
#pragma unroll
                for (int n = 0; n < KT / 8; ++n) {
                    if (n * 8 < nt) {  // (a last tile's keys past nt have p = 0)
                        const rd_u2 w = vr[n * 4];
                        const unsigned int vb[2] = {w.x, w.y};
                        unsigned int vl[2] = {0u, 0u};
                        if (SPLIT) {
                            const rd_u2 wl = vr[VL + n * 4];
                            vl[0] = wl.x;
                            vl[1] = wl.y;
                        }
                        rd_mma_tf32_parts<SPLIT>(o[i], pa[n], pl[SPLIT ? n : 0], vb, vl);
                    }
                }
            }
        }
    }
    rd_mma_store<D / 8>(o, l, place.out, row0, t, dhi, tq, nq);
}

RD_ATTENTION_MMA(tf32_d64, rd_attention_tf32<64, false, 32>)
RD_ATTENTION_MMA(tf32_d128, rd_attention_tf32<128, false, 32>)
RD_ATTENTION_MMA(tf32_d160, rd_attention_tf32<160, false, 16>)
RD_ATTENTION_MMA(3xtf32_d64, rd_attention_tf32<64, true, 32>)
