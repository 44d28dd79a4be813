// Dynamic thresholding's per-sample bound s_b = clamp(quantile(|e|, ratio), lo, hi) over the
// converted values e = (p·x + q·mo)/d, with torch.quantile's linear interpolation and
// torch.clamp's order (the CPU path is src/cpu/threshold.rs; the arithmetic is common.cuh's
// rd_*, so both give the same bits). Run before the lincomb kernel that divides by s_b.
// One block per sample (blockIdx.x). |v| ≥ 0, so the f32 bit patterns order like the values
// (NaN, after fabsf a positive NaN, sorts last as in torch's sort). The two order statistics
// the interpolation needs (ranks lo and lo+1) are found together by a 4-pass radix select:
// each pass histograms 8 bits of the candidates that match the prefix found so far, then
// warp 0 scans the 256 bins to fix the next 8 bits of each prefix.
#include "common.cuh"

#define RD_THR_THREADS 256
#define RD_THR_BINS 256

template <class D, class S>
__device__ void rd_threshold(const D* __restrict__ mo, rd_i64 mo_stride, const S* __restrict__ x,
                             rd_i64 per_sample, float p, float q, float d, float ratio,
                             float lo_bound, float hi_bound, float* __restrict__ bounds) {
    RDIFF_SHARED(unsigned int, hist, 2 * RD_THR_BINS);
    RDIFF_SHARED(unsigned int, state, 5);  // prefix[2], rank[2], NaN seen
    const rd_i64 b = blockIdx.x;
    mo += b * mo_stride;
    x += b * per_sample;
    const unsigned int tid = threadIdx.x;
    // As torch: the ratio in float32 (as passed), the rank in float64, the weight in float32.
    const double rank = rd_dmul((double)ratio, (double)(per_sample - 1));
    const rd_i64 lo_i = (rd_i64)floor(rank);
    const rd_i64 lo = lo_i < per_sample - 1 ? lo_i : per_sample - 1;
    const rd_i64 hi = lo + 1 < per_sample - 1 ? lo + 1 : per_sample - 1;
    const float weight = (float)(rank - (double)lo);
    if (tid == 0) {
        state[0] = 0;
        state[1] = 0;
        state[2] = (unsigned int)lo;
        state[3] = (unsigned int)hi;
        state[4] = 0;
    }
    unsigned int mask = 0;
    for (int pass = 0; pass < 4; ++pass) {
        const int shift = 24 - 8 * pass;
        for (unsigned int k = tid; k < 2 * RD_THR_BINS; k += blockDim.x) hist[k] = 0;
        __syncthreads();
        const unsigned int pre0 = state[0], pre1 = state[1];
        for (rd_i64 i = tid; i < per_sample; i += blockDim.x) {
            float e = rd_add(rd_mul(p, rd_to_f32(x[i])), rd_mul(q, rd_to_f32(mo[i])));
            if (d != 1.0f) e = rd_div(e, d);
            const float v = fabsf(e);
            const unsigned int u = rd_f2u(v);
            // torch.quantile is NaN as soon as one input is, wherever it sorts.
            if (pass == 0 && v != v) atomicAdd(&state[4], 1u);
            const unsigned int bin = (u >> shift) & 0xffu;
            if ((u & mask) == pre0) atomicAdd(&hist[bin], 1u);
            if ((u & mask) == pre1) atomicAdd(&hist[RD_THR_BINS + bin], 1u);
        }
        __syncthreads();
        if (tid < 32) {
            // Lane l owns bins [8l, 8l+8); an inclusive scan over lanes finds the bin holding
            // the wanted rank among the candidates.
#pragma unroll
            for (int sel = 0; sel < 2; ++sel) {
                const unsigned int* h = hist + sel * RD_THR_BINS + tid * 8;
                const unsigned int want = state[2 + sel];
                unsigned int local = 0;
#pragma unroll
                for (int k = 0; k < 8; ++k) local += h[k];
                unsigned int incl = local;
#pragma unroll
                for (int d = 1; d < 32; d <<= 1) {
                    const unsigned int o = __shfl_up_sync(0xffffffffu, incl, d);
                    if ((int)tid >= d) incl += o;
                }
                const unsigned int excl = incl - local;
                // Every lane has read `want` before one lane rewrites it: shuffles order no
                // memory, and lanes need not run in step (independent thread scheduling).
                __syncwarp();
                if (want >= excl && want < incl) {
                    unsigned int before = excl;
                    int k = 0;
                    while (before + h[k] <= want) before += h[k++];
                    state[sel] |= (tid * 8u + (unsigned int)k) << shift;
                    state[2 + sel] = want - before;
                }
            }
        }
        mask |= 0xffu << shift;
        __syncthreads();
    }
    if (tid == 0) {
        const float below = rd_u2f(state[0]);
        const float above = rd_u2f(state[1]);
        // torch.lerp: a fused multiply-add from the nearer end (fmaf is one exact FMA on the
        // GPU and on the host alike).
        const float d = rd_sub(above, below);
        float qv = weight < 0.5f ? fmaf(weight, d, below) : fmaf(rd_sub(weight, 1.0f), d, above);
        // As the CPU path: NaN stays NaN (torch.clamp keeps it, fmaxf would replace it);
        // otherwise max(q, lo) then min(·, hi), so hi < lo wins.
        if (state[4] != 0u) qv = rd_u2f(0x7fc00000u);
        if (qv == qv) {
            qv = qv < lo_bound ? lo_bound : qv;
            qv = qv > hi_bound ? hi_bound : qv;
        }
        bounds[b] = qv;
    }
}

#define RD_THRESHOLD(DN, D, SN, S)                                                          \
    extern "C" __global__ void __launch_bounds__(RD_THR_THREADS)                            \
        rdiff_threshold_##DN##_##SN(const D* __restrict__ mo, rd_i64 mo_stride,             \
                                    const S* __restrict__ x, rd_i64 per_sample, float p,     \
                                    float q, float d, float ratio, float lo, float hi,       \
                                    float* __restrict__ bounds) {                            \
        rd_threshold<D, S>(mo, mo_stride, x, per_sample, p, q, d, ratio, lo, hi, bounds);   \
    }                                                                                       \
    RDIFF_HOST_EXPORT(rdiff_threshold_##DN##_##SN)

RD_THRESHOLD(f32, float, f32, float)
RD_THRESHOLD(f32, float, f16, rd_f16)
RD_THRESHOLD(f32, float, bf16, rd_bf16)
RD_THRESHOLD(f16, rd_f16, f32, float)
RD_THRESHOLD(f16, rd_f16, f16, rd_f16)
RD_THRESHOLD(f16, rd_f16, bf16, rd_bf16)
RD_THRESHOLD(bf16, rd_bf16, f32, float)
RD_THRESHOLD(bf16, rd_bf16, f16, rd_f16)
RD_THRESHOLD(bf16, rd_bf16, bf16, rd_bf16)
