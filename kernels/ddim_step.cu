// The fused DDIM / DDPM step (formula and coefficients in src/schedule/ddim.rs; the CPU loop it
// must equal is src/cpu/ddim_step.rs):
//   y    = (p·x + q·mo)/d,  bounded: clamp(y, −c, c) (clip_sample) or clamp(y, −s_b, s_b)/s_b
//          (dynamic thresholding, s_b per sample from rdiff_dpm_threshold_*)   → x0 (dtype D)
//   ŷ    = y as stored in D
//   prev = a·x + w0·ŷ [+ w_eps·(h1·x + h2·z)/h3, z = ŷ or mo] [+ std·noise]     → prev (dtype D)
// std is a constant, or from the variance channels v = mo[per_sample + j] of a learned
// variance: √v, or exp(½·(f·max_log + (1 − f)·min_log)) with f = (v + 1)/2. noise has dtype D.
// Grid: (blocks, batch), blockIdx.y the sample; 16-byte vectors when every row pointer is
// aligned, then a scalar tail.
#include "common.cuh"

struct rd_ddim_co {
    float p, q, d, h1, h2, h3, a, w0, w_eps, std, min_log, max_log, clip;
};

#define RD_DDIM_EPS_FROM_X0 1
#define RD_DDIM_STD_SHIFT 1   // 2 bits: 0 none, 1 fixed, 2 learned, 3 learned_range
#define RD_DDIM_CLIP_SHIFT 3  // 2 bits: 0 none, 1 range, 2 dynamic (bounds)

// The bounded x₀ before storage rounding (clamps as f32::clamp: NaN passes).
RD_DEV float rd_ddim_y(const rd_ddim_co& co, int clip, float s, float x, float m) {
    float y = (co.p * x + co.q * m) / co.d;
    if (clip == 1) {
        y = y < -co.clip ? -co.clip : y;
        y = y > co.clip ? co.clip : y;
    } else if (clip == 2) {
        y = y < -s ? -s : y;
        y = y > s ? s : y;
        y = y / s;
    }
    return y;
}

// prev before storage rounding and before noise; yr is the stored x₀.
RD_DEV float rd_ddim_mean(const rd_ddim_co& co, bool eps_from_x0, float x, float m, float yr) {
    float acc = co.a * x + co.w0 * yr;
    if (co.w_eps != 0.0f) {
        const float z = eps_from_x0 ? yr : m;
        acc += co.w_eps * ((co.h1 * x + co.h2 * z) / co.h3);
    }
    return acc;
}

// acc + std·n, std by the noise mode (v: the variance channel of a learned variance).
RD_DEV float rd_ddim_noise(const rd_ddim_co& co, int std_mode, float acc, float n, float v) {
    if (std_mode == 1) {
        acc += co.std * n;
    } else if (std_mode == 2) {
        acc += sqrtf(v) * n;
    } else if (std_mode == 3) {
        const float f = (v + 1.0f) * 0.5f;
        const float l = f * co.max_log + (1.0f - f) * co.min_log;
        acc += expf(0.5f * l) * n;
    }
    return acc;
}

template <class D, class S>
__device__ void rd_ddim_step(const D* __restrict__ mo, rd_i64 mo_stride, const S* __restrict__ x,
                             const D* __restrict__ noise, D* __restrict__ x0, D* __restrict__ prev,
                             rd_i64 per_sample, rd_ddim_co co, rd_i64 flags,
                             const float* __restrict__ bounds) {
    constexpr int V = rd_width<D, S>::value;
    const rd_i64 b = blockIdx.y;
    const rd_i64 row = b * per_sample;
    mo += b * mo_stride;
    x += row;
    x0 += row;
    prev += row;
    const bool eps_from_x0 = (flags & RD_DDIM_EPS_FROM_X0) != 0;
    const int std_mode = noise ? (int)((flags >> RD_DDIM_STD_SHIFT) & 3) : 0;
    const int clip = (int)((flags >> RD_DDIM_CLIP_SHIFT) & 3);
    if (std_mode) noise += row;
    const D* var = mo + per_sample;  // read only for the learned modes
    const bool learned = std_mode >= 2;
    const float s = clip == 2 ? bounds[b] : 1.0f;
    const bool aligned = rd_aligned16(mo) && rd_aligned16(x) && rd_aligned16(x0) &&
                         rd_aligned16(prev) && (!std_mode || rd_aligned16(noise)) &&
                         (!learned || rd_aligned16(var));
    const rd_i64 nvec = aligned ? per_sample / V : 0;
    const rd_i64 t0 = rd_thread_index();
    const rd_i64 stride = rd_grid_stride();
    for (rd_i64 v = t0; v < nvec; v += stride) {
        const rd_i64 i = v * V;
        // Three V-wide arrays at most (the register budget): the noise and the variance
        // channels are loaded into x's and mo's registers once the mean is formed.
        float xv[V], mv[V], y[V];
        rd_load<S, V>(x + i, xv);
        rd_load<D, V>(mo + i, mv);
#pragma unroll
        for (int k = 0; k < V; ++k) y[k] = rd_ddim_y(co, clip, s, xv[k], mv[k]);
        rd_store<D, V>(x0 + i, y);
#pragma unroll
        for (int k = 0; k < V; ++k)
            y[k] = rd_ddim_mean(co, eps_from_x0, xv[k], mv[k], rd_round_trip<D>(y[k]));
        if (std_mode) {
            rd_load<D, V>(noise + i, xv);
            if (learned) rd_load<D, V>(var + i, mv);
#pragma unroll
            for (int k = 0; k < V; ++k) y[k] = rd_ddim_noise(co, std_mode, y[k], xv[k], mv[k]);
        }
        rd_store<D, V>(prev + i, y);
    }
    for (rd_i64 i = nvec * V + t0; i < per_sample; i += stride) {
        const float xv = rd_to_f32(x[i]);
        const float mv = rd_to_f32(mo[i]);
        const D h = rd_narrow<D>::from(rd_ddim_y(co, clip, s, xv, mv));
        x0[i] = h;
        const float n = std_mode ? rd_to_f32(noise[i]) : 0.0f;
        const float vv = learned ? rd_to_f32(var[i]) : 0.0f;
        const float acc = rd_ddim_mean(co, eps_from_x0, xv, mv, rd_to_f32(h));
        prev[i] = rd_narrow<D>::from(rd_ddim_noise(co, std_mode, acc, n, vv));
    }
}

#define RD_DDIM_STEP(DN, D, SN, S)                                                             \
    extern "C" __global__ void __launch_bounds__(256) rdiff_ddim_step_##DN##_##SN(            \
        const D* __restrict__ mo, rd_i64 mo_stride, const S* __restrict__ x,                   \
        const D* __restrict__ noise, D* __restrict__ x0, D* __restrict__ prev,                 \
        rd_i64 per_sample, float p, float q, float d, float h1, float h2, float h3, float a,   \
        float w0, float w_eps, float sd, float min_log, float max_log, float clip,            \
        rd_i64 flags, const float* __restrict__ bounds) {                                      \
        const rd_ddim_co co = {p, q, d, h1, h2, h3, a, w0, w_eps, sd, min_log, max_log, clip};   \
        rd_ddim_step<D, S>(mo, mo_stride, x, noise, x0, prev, per_sample, co, flags, bounds);  \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_ddim_step_##DN##_##SN)

RD_DDIM_STEP(f32, float, f32, float)
RD_DDIM_STEP(f32, float, f16, rd_f16)
RD_DDIM_STEP(f32, float, bf16, rd_bf16)
RD_DDIM_STEP(f16, rd_f16, f32, float)
RD_DDIM_STEP(f16, rd_f16, f16, rd_f16)
RD_DDIM_STEP(f16, rd_f16, bf16, rd_bf16)
RD_DDIM_STEP(bf16, rd_bf16, f32, float)
RD_DDIM_STEP(bf16, rd_bf16, f16, rd_f16)
RD_DDIM_STEP(bf16, rd_bf16, bf16, rd_bf16)
