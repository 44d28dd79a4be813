// The forward process: out = α_b·x0 + σ_b·ε with per-sample α, σ (f32 arrays of the batch).
// Grid: (blocks, batch) as in dpm_step.cu; 16-byte vectors when the row pointers are aligned.
#include "common.cuh"

template <class T>
__device__ void rd_add_noise(const T* __restrict__ x0, const T* __restrict__ eps,
                             const float* __restrict__ alpha, const float* __restrict__ sigma,
                             T* __restrict__ out, rd_i64 per_sample) {
    constexpr int V = 16 / sizeof(T);
    const rd_i64 b = blockIdx.y;
    const rd_i64 row = b * per_sample;
    x0 += row;
    eps += row;
    out += row;
    const float a = alpha[b], s = sigma[b];
    const bool aligned = rd_aligned16(x0) && rd_aligned16(eps) && rd_aligned16(out);
    const rd_i64 nvec = aligned ? per_sample / V : 0;
    const rd_i64 t0 = rd_thread_index();
    const rd_i64 stride = rd_grid_stride();
    for (rd_i64 v = t0; v < nvec; v += stride) {
        const rd_i64 i = v * V;
        float xv[V], ev[V];
        rd_load<T, V>(x0 + i, xv);
        rd_load<T, V>(eps + i, ev);
#pragma unroll
        for (int k = 0; k < V; ++k) xv[k] = a * xv[k] + s * ev[k];
        rd_store<T, V>(out + i, xv);
    }
    for (rd_i64 i = nvec * V + t0; i < per_sample; i += stride) {
        out[i] = rd_narrow<T>::from(a * rd_to_f32(x0[i]) + s * rd_to_f32(eps[i]));
    }
}

#define RD_ADD_NOISE(TN, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(256) rdiff_add_noise_##TN(                 \
        const T* __restrict__ x0, const T* __restrict__ eps, const float* __restrict__ alpha, \
        const float* __restrict__ sigma, T* __restrict__ out, rd_i64 per_sample) {           \
        rd_add_noise<T>(x0, eps, alpha, sigma, out, per_sample);                             \
    }                                                                                        \
    RDIFF_HOST_EXPORT(rdiff_add_noise_##TN)

RD_ADD_NOISE(f32, float)
RD_ADD_NOISE(f16, rd_f16)
RD_ADD_NOISE(bf16, rd_bf16)
