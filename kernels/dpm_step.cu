// The fused DPM-Solver step, multistep and singlestep (coefficients in src/schedule/):
//   y = p·x + q·mo;  y = clamp(y, −s_b, s_b)/s_b  (thresholding, s_b per sample)
//   m0 = r·x + w·y   → hist (stored in the model dtype D; the stored value is used below)
//   prev = a·u + w0·m0 + w1·m1 + w2·m2 + c·noise   → prev (dtype D)
// with u = x (multistep), or u = start, the sample saved at a singlestep group's first step
// (the conversion still reads the current x).
// Grid: (blocks, batch); blockIdx.y is the sample, blocks stride over its elements. Rows are
// processed V elements at a time with 16-byte loads when every row pointer is 16-byte aligned,
// then a scalar tail. start, m1, m2, noise and bounds may be null (absent).
#include "common.cuh"

struct rd_dpm_co {
    float p, q, r, w, a, w0, w1, w2, c;
};

// The converted model output for one element, before storage rounding.
RD_DEV float rd_dpm_m0(const rd_dpm_co& co, bool thr, float s, float inv, float x, float mo) {
    float y = co.p * x + co.q * mo;
    if (thr) {
        // Comparisons, not fminf/fmaxf, so that NaN propagates as on the CPU path.
        y = y < -s ? -s : (y > s ? s : y);
        y = y * inv;
    }
    return co.r * x + co.w * y;
}

template <class D, class S>
__device__ void rd_dpm_step(const D* __restrict__ mo, rd_i64 mo_stride, const S* __restrict__ x,
                            const S* __restrict__ start, const D* __restrict__ m1,
                            const D* __restrict__ m2, const float* __restrict__ noise,
                            D* __restrict__ hist, D* __restrict__ prev, rd_i64 per_sample,
                            rd_dpm_co co, const float* __restrict__ bounds) {
    constexpr int V = rd_width<D, S>::value;
    const rd_i64 b = blockIdx.y;
    const rd_i64 row = b * per_sample;
    mo += b * mo_stride;
    x += row;
    hist += row;
    prev += row;
    if (start) start += row;
    if (m1) m1 += row;
    if (m2) m2 += row;
    if (noise) noise += row;
    const bool thr = bounds != nullptr;
    const float s = thr ? bounds[b] : 1.0f;
    const float inv = 1.0f / s;
    const bool aligned = rd_aligned16(mo) && rd_aligned16(x) && rd_aligned16(hist) &&
                         rd_aligned16(prev) && (!start || rd_aligned16(start)) &&
                         (!m1 || rd_aligned16(m1)) &&
                         (!m2 || rd_aligned16(m2)) && (!noise || rd_aligned16(noise));
    const rd_i64 nvec = aligned ? per_sample / V : 0;
    const rd_i64 t0 = rd_thread_index();
    const rd_i64 stride = rd_grid_stride();
    for (rd_i64 v = t0; v < nvec; v += stride) {
        const rd_i64 i = v * V;
        float xv[V], mv[V], acc[V], t[V];
        rd_load<S, V>(x + i, xv);
        rd_load<D, V>(mo + i, mv);
#pragma unroll
        for (int k = 0; k < V; ++k) mv[k] = rd_dpm_m0(co, thr, s, inv, xv[k], mv[k]);
        rd_store<D, V>(hist + i, mv);
        if (start) rd_load<S, V>(start + i, xv);  // the update starts from the group's start
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k] = co.a * xv[k] + co.w0 * rd_round_trip<D>(mv[k]);
        if (m1) {
            rd_load<D, V>(m1 + i, t);
#pragma unroll
            for (int k = 0; k < V; ++k) acc[k] += co.w1 * t[k];
        }
        if (m2) {
            rd_load<D, V>(m2 + i, t);
#pragma unroll
            for (int k = 0; k < V; ++k) acc[k] += co.w2 * t[k];
        }
        if (noise) {
            rd_load<float, V>(noise + i, t);
#pragma unroll
            for (int k = 0; k < V; ++k) acc[k] += co.c * t[k];
        }
        rd_store<D, V>(prev + i, acc);
    }
    for (rd_i64 i = nvec * V + t0; i < per_sample; i += stride) {
        const float xv = rd_to_f32(x[i]);
        const D h = rd_narrow<D>::from(rd_dpm_m0(co, thr, s, inv, xv, rd_to_f32(mo[i])));
        hist[i] = h;
        const float u = start ? rd_to_f32(start[i]) : xv;
        float acc = co.a * u + co.w0 * rd_to_f32(h);
        if (m1) acc += co.w1 * rd_to_f32(m1[i]);
        if (m2) acc += co.w2 * rd_to_f32(m2[i]);
        if (noise) acc += co.c * noise[i];
        prev[i] = rd_narrow<D>::from(acc);
    }
}

#define RD_DPM_STEP(DN, D, SN, S)                                                              \
    extern "C" __global__ void __launch_bounds__(256) rdiff_dpm_step_##DN##_##SN(             \
        const D* __restrict__ mo, rd_i64 mo_stride, const S* __restrict__ x,                   \
        const S* __restrict__ start, const D* __restrict__ m1, const D* __restrict__ m2,       \
        const float* __restrict__ noise, D* __restrict__ hist, D* __restrict__ prev,           \
        rd_i64 per_sample, float p, float q,                                                   \
        float r, float w, float a, float w0, float w1, float w2, float c,                      \
        const float* __restrict__ bounds) {                                                    \
        const rd_dpm_co co = {p, q, r, w, a, w0, w1, w2, c};                                   \
        rd_dpm_step<D, S>(mo, mo_stride, x, start, m1, m2, noise, hist, prev, per_sample, co,  \
                          bounds);                                                             \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_dpm_step_##DN##_##SN)

RD_DPM_STEP(f32, float, f32, float)
RD_DPM_STEP(f32, float, f16, rd_f16)
RD_DPM_STEP(f32, float, bf16, rd_bf16)
RD_DPM_STEP(f16, rd_f16, f32, float)
RD_DPM_STEP(f16, rd_f16, f16, rd_f16)
RD_DPM_STEP(f16, rd_f16, bf16, rd_bf16)
RD_DPM_STEP(bf16, rd_bf16, f32, float)
RD_DPM_STEP(bf16, rd_bf16, f16, rd_f16)
RD_DPM_STEP(bf16, rd_bf16, bf16, rd_bf16)
