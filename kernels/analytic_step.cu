// The fused Analytic-DPM step (formula and scalars in src/schedule/analytic_dpm.rs; the CPU
// loop it must equal is src/cpu/analytic_step.rs):
//   e    = p·x + q·mo                       (the model output as a noise prediction)
//   x̂₀   = (x − sb·e)·isa, clamped to [lo, hi] when clipping    → x0 (dtype D)
//   prev = c_x0·x̂₀ + c_x·x + c_eps·e + σ·n                       → prev (dtype D)
// n is the f32 `noise` buffer when given, else (flag 2) element b·per_sample + j of the
// Philox stream (seed, offset) drawn in the kernel (philox.cuh), else absent (σ = 0).
// Grid: (blocks, batch); blockIdx.y is the sample, blocks stride over its elements, V elements
// at a time with 16-byte loads when every row pointer is aligned (and, for in-kernel noise,
// when the row starts on a Philox lane group), then a scalar tail.
#include "common.cuh"
#include "philox.cuh"

struct rd_an_co {
    float p, q, sb, isa, c_x0, c_x, c_eps, sigma, lo, hi;
};

#define RD_AN_CLIP 1
#define RD_AN_PHILOX 2

// x̂₀ of one element, clamped as f32::clamp does (NaN passes through).
RD_DEV float rd_an_x0(const rd_an_co& co, bool clip, float x, float e) {
    float v = (x - co.sb * e) * co.isa;
    if (clip) {
        v = v < co.lo ? co.lo : v;
        v = v > co.hi ? co.hi : v;
    }
    return v;
}

template <class D, class S>
__device__ void rd_analytic_step(const D* __restrict__ mo, rd_i64 mo_stride,
                                 const S* __restrict__ x, const float* __restrict__ noise,
                                 D* __restrict__ x0, D* __restrict__ prev, rd_i64 per_sample,
                                 rd_an_co co, rd_i64 flags, rd_u64 seed, rd_u64 offset) {
    constexpr int V = rd_width<D, S>::value;  // 4 or 8: whole Philox lane groups
    const rd_i64 b = blockIdx.y;
    const rd_i64 row = b * per_sample;
    mo += b * mo_stride;
    x += row;
    x0 += row;
    prev += row;
    if (noise) noise += row;
    const bool clip = (flags & RD_AN_CLIP) != 0;
    const bool philox = !noise && (flags & RD_AN_PHILOX) != 0;
    const bool aligned = rd_aligned16(mo) && rd_aligned16(x) && rd_aligned16(x0) &&
                         rd_aligned16(prev) && (!noise || rd_aligned16(noise)) &&
                         (!philox || (row & 3) == 0);
    const rd_i64 nvec = aligned ? per_sample / V : 0;
    const rd_i64 t0 = rd_thread_index();
    const rd_i64 stride = rd_grid_stride();
    for (rd_i64 v = t0; v < nvec; v += stride) {
        const rd_i64 i = v * V;
        float xv[V], e[V], r[V], acc[V];
        rd_load<S, V>(x + i, xv);
        rd_load<D, V>(mo + i, e);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            e[k] = co.p * xv[k] + co.q * e[k];
            r[k] = rd_an_x0(co, clip, xv[k], e[k]);
            acc[k] = co.c_x0 * r[k] + co.c_x * xv[k] + co.c_eps * e[k];
        }
        rd_store<D, V>(x0 + i, r);
        if (noise) {
            rd_load<float, V>(noise + i, e);
#pragma unroll
            for (int k = 0; k < V; ++k) acc[k] += co.sigma * e[k];
        } else if (philox) {
            const rd_u64 g0 = (rd_u64)(row + i) >> 2;
#pragma unroll
            for (int g = 0; g < V / 4; ++g) {
                const rd_normal4 n = rd_philox_normals4(seed, offset, g0 + g);
                acc[4 * g + 0] += co.sigma * n.z0;
                acc[4 * g + 1] += co.sigma * n.z1;
                acc[4 * g + 2] += co.sigma * n.z2;
                acc[4 * g + 3] += co.sigma * n.z3;
            }
        }
        rd_store<D, V>(prev + i, acc);
    }
    for (rd_i64 i = nvec * V + t0; i < per_sample; i += stride) {
        const float xv = rd_to_f32(x[i]);
        const float e = co.p * xv + co.q * rd_to_f32(mo[i]);
        const float r = rd_an_x0(co, clip, xv, e);
        x0[i] = rd_narrow<D>::from(r);
        float acc = co.c_x0 * r + co.c_x * xv + co.c_eps * e;
        if (noise) {
            acc += co.sigma * noise[i];
        } else if (philox) {
            acc += co.sigma * rd_philox_normal(seed, offset, (rd_u64)(row + i));
        }
        prev[i] = rd_narrow<D>::from(acc);
    }
}

#define RD_ANALYTIC_STEP(DN, D, SN, S)                                                         \
    extern "C" __global__ void __launch_bounds__(256) rdiff_analytic_step_##DN##_##SN(        \
        const D* __restrict__ mo, rd_i64 mo_stride, const S* __restrict__ x,                   \
        const float* __restrict__ noise, D* __restrict__ x0, D* __restrict__ prev,             \
        rd_i64 per_sample, float p, float q, float sb, float isa, float c_x0, float c_x,       \
        float c_eps, float sigma, float lo, float hi, rd_i64 flags, rd_i64 seed,               \
        rd_i64 offset) {                                                                       \
        const rd_an_co co = {p, q, sb, isa, c_x0, c_x, c_eps, sigma, lo, hi};                  \
        rd_analytic_step<D, S>(mo, mo_stride, x, noise, x0, prev, per_sample, co, flags,       \
                               (rd_u64)seed, (rd_u64)offset);                                  \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_analytic_step_##DN##_##SN)

RD_ANALYTIC_STEP(f32, float, f32, float)
RD_ANALYTIC_STEP(f32, float, f16, rd_f16)
RD_ANALYTIC_STEP(f32, float, bf16, rd_bf16)
RD_ANALYTIC_STEP(f16, rd_f16, f32, float)
RD_ANALYTIC_STEP(f16, rd_f16, f16, rd_f16)
RD_ANALYTIC_STEP(f16, rd_f16, bf16, rd_bf16)
RD_ANALYTIC_STEP(bf16, rd_bf16, f32, float)
RD_ANALYTIC_STEP(bf16, rd_bf16, f16, rd_f16)
RD_ANALYTIC_STEP(bf16, rd_bf16, bf16, rd_bf16)
