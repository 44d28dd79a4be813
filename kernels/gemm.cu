// A batched f32 GEMM with arbitrary element strides, for the UNet's convolutions (im2col
// columns × weights), linear layers and attention (QKᵀ, PV):
//   C[z][i][j] = beta · C[z][i][j] + alpha · Σ_k A[z](i, k) · B[z](k, j)
// A(i, k) = a[z·a_bs + i·a_rs + k·a_cs], B likewise, C row-major with row stride c_rs.
// With beta == 0, C is not read (it may hold garbage or NaN). rdiff_gemm_f32 reads f32
// operands; with rounding 1 (bf16), 2 (f16) or 3 (tf32) it rounds each to that type as it
// loads it. rdiff_gemm_bf16 / _f16 read operands stored in that type (a half-precision
// model's weights and columns on the device; strides in its elements). Either way, the
// numerics of bf16, f16 or tf32 tensor-core math (compute_dtype="bfloat16" / "float16" /
// "tfloat32") where cuBLAS is missing, at f32 SIMT speed. C is f32 in all three.
//
// 64×64 output tile per block of 256 threads, each thread a 4×4 register tile (rows ty+16r,
// columns tx+16c, so shared-memory reads are broadcasts or consecutive words), K in slices of
// 16 through shared memory. Global loads walk the operand's contiguous dimension across
// consecutive threads (coalesced) whichever of the two it is. f32 SIMT: the emulated launcher
// replaces this kernel with a CPU GEMM (src/cuda/unet/device.rs); the test suite runs it
// through the emulator on small shapes only.
#include "common.cuh"

#define RD_GEMM_BM 64
#define RD_GEMM_BN 64
#define RD_GEMM_BK 16
#define RD_GEMM_THREADS 256

// An operand as the tensor cores of `rounding`'s math see it (0: f32, unchanged; 3: tf32, as
// cvt.rna.tf32.f32 rounds).
RD_DEV float rd_gemm_round(float v, rd_i64 rounding) {
    if (rounding == 1) return rd_bf16_to_f32(rd_f32_to_bf16(v));
    if (rounding == 2) return rd_f16_to_f32(rd_f32_to_f16(v));
    if (rounding == 3) return rd_round_tf32(v);
    return v;
}

template <class T>
__device__ void rd_gemm(rd_i64 m, rd_i64 n, rd_i64 k, const T* __restrict__ a, rd_i64 a_rs,
                        rd_i64 a_cs, rd_i64 a_bs, const T* __restrict__ b, rd_i64 b_rs,
                        rd_i64 b_cs, rd_i64 b_bs, float* __restrict__ c, rd_i64 c_rs,
                        rd_i64 c_bs, float alpha, float beta, rd_i64 rounding) {
    RDIFF_SHARED(float, sa, RD_GEMM_BK * RD_GEMM_BM);
    RDIFF_SHARED(float, sb, RD_GEMM_BK * RD_GEMM_BN);
    const int tid = (int)threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;
    const rd_i64 i0 = (rd_i64)blockIdx.y * RD_GEMM_BM;
    const rd_i64 j0 = (rd_i64)blockIdx.x * RD_GEMM_BN;
    a += (rd_i64)blockIdx.z * a_bs;
    b += (rd_i64)blockIdx.z * b_bs;
    c += (rd_i64)blockIdx.z * c_bs;
    const bool a_k_contig = a_cs == 1;
    const bool b_j_contig = b_cs == 1;
    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[r][q] = 0.0f;

    for (rd_i64 k0 = 0; k0 < k; k0 += RD_GEMM_BK) {
        // 1024 elements of each tile, 4 per thread.
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int e = tid + r * RD_GEMM_THREADS;
            int ii, kk;
            if (a_k_contig) {
                kk = e & (RD_GEMM_BK - 1);
                ii = e >> 4;
            } else {
                ii = e & (RD_GEMM_BM - 1);
                kk = e >> 6;
            }
            const rd_i64 gi = i0 + ii, gk = k0 + kk;
            const float av = (gi < m && gk < k) ? rd_to_f32(a[gi * a_rs + gk * a_cs]) : 0.0f;
            sa[kk * RD_GEMM_BM + ii] = rd_gemm_round(av, rounding);
            int jj;
            if (b_j_contig) {
                jj = e & (RD_GEMM_BN - 1);
                kk = e >> 6;
            } else {
                kk = e & (RD_GEMM_BK - 1);
                jj = e >> 4;
            }
            const rd_i64 gj = j0 + jj, gk2 = k0 + kk;
            const float bv = (gj < n && gk2 < k) ? rd_to_f32(b[gk2 * b_rs + gj * b_cs]) : 0.0f;
            sb[kk * RD_GEMM_BN + jj] = rd_gemm_round(bv, rounding);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < RD_GEMM_BK; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) av[r] = sa[kk * RD_GEMM_BM + ty + 16 * r];
#pragma unroll
            for (int q = 0; q < 4; ++q) bv[q] = sb[kk * RD_GEMM_BN + tx + 16 * q];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[r][q] += av[r] * bv[q];
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const rd_i64 gi = i0 + ty + 16 * r;
        if (gi >= m) continue;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const rd_i64 gj = j0 + tx + 16 * q;
            if (gj >= n) continue;
            float v = alpha * acc[r][q];
            if (beta != 0.0f) v += beta * c[gi * c_rs + gj];
            c[gi * c_rs + gj] = v;
        }
    }
}

#define RD_GEMM_ENTRY(TN, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(RD_GEMM_THREADS) rdiff_gemm_##TN(              \
        rd_i64 m, rd_i64 n, rd_i64 k, const T* __restrict__ a, rd_i64 a_rs, rd_i64 a_cs,       \
        rd_i64 a_bs, const T* __restrict__ b, rd_i64 b_rs, rd_i64 b_cs, rd_i64 b_bs,           \
        float* __restrict__ c, rd_i64 c_rs, rd_i64 c_bs, float alpha, float beta,              \
        rd_i64 rounding) {                                                                     \
        rd_gemm<T>(m, n, k, a, a_rs, a_cs, a_bs, b, b_rs, b_cs, b_bs, c, c_rs, c_bs, alpha,     \
                   beta, rounding);                                                            \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_gemm_##TN)

RD_GEMM_ENTRY(f32, float)
RD_GEMM_ENTRY(f16, rd_f16)
RD_GEMM_ENTRY(bf16, rd_bf16)
