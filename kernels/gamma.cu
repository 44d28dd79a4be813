// Analytic-DPM's Γ statistic, per sample: out[b] = Σ ε² / d over the sample's d elements.
// One block per sample (blockIdx.x): each thread accumulates a strided share in f32 (16-byte
// loads when the row is aligned), warps reduce with shuffles, warp sums meet in shared memory
// and warp 0 reduces those.
#include "common.cuh"

#define RD_GAMMA_THREADS 256

template <class T>
__device__ void rd_gamma(const T* __restrict__ eps, rd_i64 per_sample, float* __restrict__ out) {
    RDIFF_SHARED(float, warp_sums, RD_GAMMA_THREADS / 32);
    constexpr int V = 16 / sizeof(T);
    const rd_i64 b = blockIdx.x;
    eps += b * per_sample;
    const unsigned int tid = threadIdx.x;
    const rd_i64 nvec = rd_aligned16(eps) ? per_sample / V : 0;
    float acc = 0.0f;
    for (rd_i64 v = tid; v < nvec; v += blockDim.x) {
        float e[V];
        rd_load<T, V>(eps + v * V, e);
#pragma unroll
        for (int k = 0; k < V; ++k) acc += e[k] * e[k];
    }
    for (rd_i64 i = nvec * V + tid; i < per_sample; i += blockDim.x) {
        const float e = rd_to_f32(eps[i]);
        acc += e * e;
    }
    acc = rd_warp_sum(acc);
    if ((tid & 31u) == 0) warp_sums[tid >> 5] = acc;
    __syncthreads();
    if (tid < 32) {
        const unsigned int warps = blockDim.x >> 5;
        float v = tid < warps ? warp_sums[tid] : 0.0f;
        v = rd_warp_sum(v);
        if (tid == 0) out[b] = v / (float)per_sample;
    }
}

#define RD_GAMMA(TN, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(RD_GAMMA_THREADS)                             \
        rdiff_gamma_##TN(const T* __restrict__ eps, rd_i64 per_sample, float* __restrict__ out) { \
        rd_gamma<T>(eps, per_sample, out);                                                     \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_gamma_##TN)

RD_GAMMA(f32, float)
RD_GAMMA(f16, rd_f16)
RD_GAMMA(bf16, rd_bf16)
