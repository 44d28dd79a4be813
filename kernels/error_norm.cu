// The adaptive DPM-Solver's error norm per sample (src/error_norm.rs):
//   out[b] = √(Σ_i ((hi_i − lo_i) / max(atol, rtol·max(|lo_i|, |prev_i|)))² / d)
// in f64. One block of 256 threads per sample (blockIdx.x): thread t sums elements t, t+256,
// ... in order, then a fixed tree halves the 256 partial sums, the order the CPU loop
// (src/cpu/error_norm.rs) sums in, with correctly rounded operations: the same bits.
#include "common.cuh"

#define RD_EN_THREADS 256

template <class T>
__device__ void rd_error_norm(const T* __restrict__ hi, const T* __restrict__ lo,
                              const T* __restrict__ prev, rd_i64 per_sample, double atol,
                              double rtol, double* __restrict__ out) {
    RDIFF_SHARED(double, part, RD_EN_THREADS);
    const rd_i64 b = blockIdx.x;
    const rd_i64 row = b * per_sample;
    const unsigned int tid = threadIdx.x;
    double acc = 0.0;
    for (rd_i64 i = tid; i < per_sample; i += RD_EN_THREADS) {
        const double h = (double)rd_to_f32(hi[row + i]);
        const double l = (double)rd_to_f32(lo[row + i]);
        const double p = (double)rd_to_f32(prev[row + i]);
        const double delta = fmax(atol, rd_dmul(rtol, fmax(fabs(l), fabs(p))));
        const double v = rd_ddiv(h - l, delta);
        acc = rd_dadd(acc, rd_dmul(v, v));
    }
    part[tid] = acc;
    __syncthreads();
    for (unsigned int s = RD_EN_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) part[tid] = rd_dadd(part[tid], part[tid + s]);
        __syncthreads();
    }
    if (tid == 0) {
        const double n = per_sample > 0 ? (double)per_sample : 1.0;
        out[b] = rd_dsqrt(rd_ddiv(part[0], n));
    }
}

#define RD_ERROR_NORM(TN, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(RD_EN_THREADS) rdiff_error_norm_##TN(      \
        const T* __restrict__ hi, const T* __restrict__ lo, const T* __restrict__ prev,      \
        rd_i64 per_sample, double atol, double rtol, double* __restrict__ out) {             \
        rd_error_norm<T>(hi, lo, prev, per_sample, atol, rtol, out);                         \
    }                                                                                        \
    RDIFF_HOST_EXPORT(rdiff_error_norm_##TN)

RD_ERROR_NORM(f32, float)
RD_ERROR_NORM(f16, rd_f16)
RD_ERROR_NORM(bf16, rd_bf16)
