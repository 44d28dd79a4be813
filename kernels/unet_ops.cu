// The UNet's non-GEMM ops on the internal f32 layout [c][b][h][w]: GroupNorm fused with its
// affine, the scale/shift time conditioning and SiLU; nearest 2× upsampling and 2×2 average
// pooling; the sinusoidal / Fourier timestep projection; a row-wise bias + add + SiLU for the
// embedding MLPs; the transformers' LayerNorm over channels and GEGLU (the attention is in
// unet_attention.cu). CPU counterparts: src/cpu/{norm,resample,layer_norm,geglu}.rs,
// src/unet/embeddings.rs.
#include "common.cuh"

#define RD_UNET_OPS_THREADS 256

RD_DEV float rd_silu(float x) { return x / (1.0f + expf(-x)); }

// Sum over the block, returned to every thread. `sh` holds 33 floats; safe to call again
// right after (the broadcast slot is written only after the next call's first barrier).
// A butterfly leaves each warp's sum in all its lanes, so a one-warp block needs no shared
// memory and no barrier.
RD_DEV float rd_unet_block_sum(float v, float* sh) {
    const unsigned int tid = threadIdx.x;
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
    if (blockDim.x == 32) return v;
    if ((tid & 31u) == 0) sh[tid >> 5] = v;
    __syncthreads();
    if (tid < 32) {
        float s = tid < (blockDim.x >> 5) ? sh[tid] : 0.0f;
        s = rd_warp_sum(s);
        if (tid == 0) sh[32] = s;
    }
    __syncthreads();
    return sh[32];
}

// sin / cos of an f32 argument reduced exactly (in f64) to [-π, π] first: the fast hardware
// approximations are accurate there (≈ 2⁻²¹ absolute), and nothing falls back to the slow
// large-argument path with its local-memory stack frame.
RD_DEV float rd_unet_sin_cos(float a, bool use_sin) {
    const double two_pi = 6.283185307179586476925286766559;
    const double ad = (double)a;
    const float r = (float)(ad - two_pi * rint(ad / two_pi));
#ifdef RDIFF_HOST
    return use_sin ? sinf(r) : cosf(r);
#else
    return use_sin ? __sinf(r) : __cosf(r);
#endif
}

// One block per (group, sample) = (blockIdx.x, blockIdx.y). The input is the channel
// concatenation of x0 (c0 channels) and x1 (the other c − c0; null when c0 == c), each
// [ch][batch][hw]; a group may straddle the two. Mean, then variance about the mean (two
// passes, f32); then out = act((x − mean)·rstd·γ + β), with scale_shift ([batch][2c], scale
// first) applied as ·(1 + scale) + shift before the activation.
extern "C" __global__ void __launch_bounds__(RD_UNET_OPS_THREADS)
    rdiff_unet_group_norm_f32(const float* __restrict__ x0, rd_i64 c0,
                              const float* __restrict__ x1, rd_i64 c, rd_i64 batch, rd_i64 hw,
                              rd_i64 groups, float eps, const float* __restrict__ gamma,
                              const float* __restrict__ beta,
                              const float* __restrict__ scale_shift, rd_i64 silu,
                              float* __restrict__ out) {
    RDIFF_SHARED(float, sh, 33);
    const rd_i64 g = blockIdx.x, b = blockIdx.y;
    const rd_i64 cg = c / groups, cnt = cg * hw, n = batch * hw;
    const rd_i64 first = g * cg;
#define RD_GN_AT(ch, p) \
    ((ch) < c0 ? x0[(ch) * n + b * hw + (p)] : x1[((ch) - c0) * n + b * hw + (p)])
    float s = 0.0f;
    for (rd_i64 e = threadIdx.x; e < cnt; e += blockDim.x) s += RD_GN_AT(first + e / hw, e % hw);
    const float mean = rd_unet_block_sum(s, sh) / (float)cnt;
    float q = 0.0f;
    for (rd_i64 e = threadIdx.x; e < cnt; e += blockDim.x) {
        const float d = RD_GN_AT(first + e / hw, e % hw) - mean;
        q += d * d;
    }
    const float var = rd_unet_block_sum(q, sh) / (float)cnt;
    const float rstd = 1.0f / sqrtf(var + eps);
    for (rd_i64 e = threadIdx.x; e < cnt; e += blockDim.x) {
        const rd_i64 ch = first + e / hw, p = e % hw;
        float a = rstd * gamma[ch];
        float o = beta[ch] - mean * a;
        if (scale_shift) {
            const float sc = 1.0f + scale_shift[b * 2 * c + ch];
            a *= sc;
            o = o * sc + scale_shift[b * 2 * c + c + ch];
        }
        float v = RD_GN_AT(ch, p) * a + o;
        if (silu) v = rd_silu(v);
        out[ch * n + b * hw + p] = v;
    }
#undef RD_GN_AT
}
RDIFF_HOST_EXPORT(rdiff_unet_group_norm_f32)

// Nearest 2× upsampling of `planes` planes of h×w.
extern "C" __global__ void __launch_bounds__(RD_UNET_OPS_THREADS)
    rdiff_unet_upsample2x_f32(const float* __restrict__ x, rd_i64 planes, rd_i64 h, rd_i64 w,
                              float* __restrict__ out) {
    const rd_i64 w2 = 2 * w, per = 4 * h * w, total = planes * per;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const rd_i64 pl = e / per, rem = e % per;
        out[e] = x[pl * h * w + (rem / w2 / 2) * w + (rem % w2) / 2];
    }
}
RDIFF_HOST_EXPORT(rdiff_unet_upsample2x_f32)

// 2×2 average pooling, stride 2, of `planes` planes of h×w (summed in the CPU path's order).
extern "C" __global__ void __launch_bounds__(RD_UNET_OPS_THREADS)
    rdiff_unet_avgpool2x_f32(const float* __restrict__ x, rd_i64 planes, rd_i64 h, rd_i64 w,
                             float* __restrict__ out) {
    const rd_i64 ho = h / 2, wo = w / 2, per = ho * wo, total = planes * per;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const rd_i64 pl = e / per, rem = e % per;
        const rd_i64 y = rem / wo, xx = rem % wo;
        const float* r0 = x + pl * h * w + 2 * y * w + 2 * xx;
        const float* r1 = r0 + w;
        out[e] = (r0[0] + r0[1] + r1[0] + r1[1]) * 0.25f;
    }
}
RDIFF_HOST_EXPORT(rdiff_unet_avgpool2x_f32)

// The timestep projection, [batch][dim], one row per sample from ts[batch] (f32):
//   fourier == 0: diffusers' get_timestep_embedding, freq_k = exp(neg_log·k / denom)
//                 (neg_log = −ln 10000, denom = dim/2 − freq_shift, both from the host),
//                 sin in the first half and cos in the second (swapped with `flip`), a zero
//                 last column for an odd dim;
//   fourier == 1: GaussianFourierProjection(log=True): a = ln t · w_k · 2 · π, sin then cos,
//                 dim = 2·len(w).
extern "C" __global__ void __launch_bounds__(RD_UNET_OPS_THREADS)
    rdiff_unet_time_proj_f32(const float* __restrict__ ts, rd_i64 batch, rd_i64 dim,
                             rd_i64 fourier, rd_i64 flip, float neg_log, float denom,
                             const float* __restrict__ fw, float* __restrict__ out) {
    const rd_i64 half = dim / 2, total = batch * dim;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const rd_i64 b = e / dim, j = e % dim;
        if (j >= 2 * half) {
            out[e] = 0.0f;
            continue;
        }
        const bool second = j >= half;
        const rd_i64 kk = second ? j - half : j;
        const float t = ts[b];
        float a;
        bool use_sin;
        if (fourier) {
            a = logf(t) * fw[kk] * 2.0f * 3.14159265358979323846f;
            use_sin = !second;
        } else {
            a = t * expf((neg_log * (float)kk) / denom);
            use_sin = flip ? second : !second;
        }
        out[e] = rd_unet_sin_cos(a, use_sin);
    }
}
RDIFF_HOST_EXPORT(rdiff_unet_time_proj_f32)

// out[r][j] = act(x[r][j] + bias[j] + add[r mod add_rows][j]), each term optional (null);
// act is SiLU when `silu`. out may alias x.
extern "C" __global__ void __launch_bounds__(RD_UNET_OPS_THREADS)
    rdiff_unet_rows_f32(const float* x, rd_i64 rows, rd_i64 cols,
                        const float* __restrict__ bias, const float* __restrict__ add,
                        rd_i64 add_rows, rd_i64 silu, float* out) {
    const rd_i64 total = rows * cols;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const rd_i64 r = e / cols, j = e % cols;
        float v = x ? x[e] : 0.0f;
        if (bias) v += bias[j];
        if (add) v += add[(r % add_rows) * cols + j];
        if (silu) v = rd_silu(v);
        out[e] = v;
    }
}
RDIFF_HOST_EXPORT(rdiff_unet_rows_f32)

// LayerNorm of each column of x ([c][n], the tokens are columns) across its c rows, with the
// affine transform: one thread per column, so at every step a warp reads consecutive columns
// of one row (coalesced). Two passes for the statistics (mean, then the variance about it),
// f32, as the CPU path (src/cpu/layer_norm.rs) and torch compute them.
extern "C" __global__ void __launch_bounds__(RD_UNET_OPS_THREADS)
    rdiff_unet_layer_norm_f32(const float* __restrict__ x, rd_i64 c, rd_i64 n, float eps,
                              const float* __restrict__ gamma, const float* __restrict__ beta,
                              float* __restrict__ out) {
    for (rd_i64 j = rd_thread_index(); j < n; j += rd_grid_stride()) {
        float s = 0.0f;
        for (rd_i64 r = 0; r < c; ++r) s += x[r * n + j];
        const float mean = s / (float)c;
        float q = 0.0f;
        for (rd_i64 r = 0; r < c; ++r) {
            const float d = x[r * n + j] - mean;
            q += d * d;
        }
        const float rstd = 1.0f / sqrtf(q / (float)c + eps);
        for (rd_i64 r = 0; r < c; ++r)
            out[r * n + j] = (x[r * n + j] - mean) * rstd * gamma[r] + beta[r];
    }
}
RDIFF_HOST_EXPORT(rdiff_unet_layer_norm_f32)

// GEGLU: x is [2·inner][n] (values, then gates), out[e] = x[e] · GELU(x[inner·n + e]) with the
// exact erf GELU (torch's approximate="none").
extern "C" __global__ void __launch_bounds__(RD_UNET_OPS_THREADS)
    rdiff_unet_geglu_f32(const float* __restrict__ x, rd_i64 inner, rd_i64 n,
                         float* __restrict__ out) {
    const rd_i64 total = inner * n;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const float g = x[total + e];
        out[e] = x[e] * (0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));
    }
}
RDIFF_HOST_EXPORT(rdiff_unet_geglu_f32)
