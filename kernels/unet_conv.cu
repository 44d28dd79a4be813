// The UNet's convolution helpers on the internal f32 layout [c][b][h][w] (batch folded into
// the columns, as in src/cpu/conv.rs): im2col for a tile of output columns (and the other
// half-precision GEMM operands, narrowed from the f32 activations), the epilogue's
// starting value (bias, time embedding, residual; the GEMM then accumulates onto it), and the
// conversions between the caller's NCHW tensors (f32/f16/bf16) and the internal layout.
//
// All are grid-stride loops over their output, consecutive threads on consecutive output
// elements (coalesced stores; loads coalesced along image rows).
#include "common.cuh"

#define RD_UNET_THREADS 256

// cols[row0 + ci·k² + ky·k + kx][j] = x[ci] at the input pixel that output column c0 + j reads
// through tap (ky, kx) (zero outside the image); x is one channel segment [sc][batch][h][w].
// With `upsample`, the input is read as its nearest 2× upsampling (fused, never stored). The
// columns are stored as T: f32, or a half-precision model's GEMM operand (rounded to nearest
// even, as the tensor cores would round it).
template <class T>
__device__ void rd_unet_im2col(const float* __restrict__ x, rd_i64 sc, rd_i64 batch, rd_i64 h,
                               rd_i64 w, rd_i64 k, rd_i64 stride, rd_i64 pad_t, rd_i64 pad_l,
                               rd_i64 upsample, rd_i64 ho, rd_i64 wo, rd_i64 c0, rd_i64 tn,
                               T* __restrict__ cols, rd_i64 row0) {
    const rd_i64 kk = k * k;
    const rd_i64 total = sc * kk * tn;
    const rd_i64 plane = batch * h * w;
    const rd_i64 hv = upsample ? 2 * h : h, wv = upsample ? 2 * w : w;
    const rd_i64 ohw = ho * wo;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const rd_i64 j = e % tn, r = e / tn;
        const rd_i64 ci = r / kk, t = r % kk;
        const rd_i64 ky = t / k, kx = t % k;
        const rd_i64 col = c0 + j;
        const rd_i64 bb = col / ohw, rem = col % ohw;
        const rd_i64 iy = (rem / wo) * stride + ky - pad_t;
        const rd_i64 ix = (rem % wo) * stride + kx - pad_l;
        float v = 0.0f;
        if (iy >= 0 && iy < hv && ix >= 0 && ix < wv) {
            const rd_i64 sy = upsample ? iy / 2 : iy, sx = upsample ? ix / 2 : ix;
            v = x[ci * plane + (bb * h + sy) * w + sx];
        }
        cols[(row0 + r) * tn + j] = rd_narrow<T>::from(v);
    }
}

// out[ch][j] (T) = channel ch of a one- or two-segment activation, rounded: x0 holds channels
// [0, c0), x1 the rest, each row n long. A half-precision model's 1×1 convolutions and linear
// layers read their input through this (cuBLAS takes both operands of one type).
template <class T>
__device__ void rd_unet_narrow(const float* __restrict__ x0, rd_i64 c0,
                               const float* __restrict__ x1, rd_i64 c, rd_i64 n,
                               T* __restrict__ out) {
    const rd_i64 total = c * n;
    const rd_i64 split = c0 * n;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const float v = e < split ? x0[e] : x1[e - split];
        out[e] = rd_narrow<T>::from(v);
    }
}

#define RD_UNET_OPERAND(TN, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(RD_UNET_THREADS) rdiff_unet_im2col_##TN(      \
        const float* __restrict__ x, rd_i64 sc, rd_i64 batch, rd_i64 h, rd_i64 w, rd_i64 k,     \
        rd_i64 stride, rd_i64 pad_t, rd_i64 pad_l, rd_i64 upsample, rd_i64 ho, rd_i64 wo,       \
        rd_i64 c0, rd_i64 tn, T* __restrict__ cols, rd_i64 row0) {                             \
        rd_unet_im2col<T>(x, sc, batch, h, w, k, stride, pad_t, pad_l, upsample, ho, wo, c0,    \
                          tn, cols, row0);                                                     \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_unet_im2col_##TN)

RD_UNET_OPERAND(f32, float)
RD_UNET_OPERAND(f16, rd_f16)
RD_UNET_OPERAND(bf16, rd_bf16)

#define RD_UNET_NARROW(TN, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(RD_UNET_THREADS) rdiff_unet_narrow_##TN(      \
        const float* __restrict__ x0, rd_i64 c0, const float* __restrict__ x1, rd_i64 c,       \
        rd_i64 n, T* __restrict__ out) {                                                       \
        rd_unet_narrow<T>(x0, c0, x1, c, n, out);                                              \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_unet_narrow_##TN)

RD_UNET_NARROW(f16, rd_f16)
RD_UNET_NARROW(bf16, rd_bf16)

// out[c][col] = bias[c] + bias2[c] + temb[b·temb_stride + c] + residual[c][col] (each term
// optional: null pointer), col in [0, n), b = col / hw. The residual may be a concatenation
// of two segments: r0 holds channels [0, r0_ch), r1 the rest.
extern "C" __global__ void __launch_bounds__(RD_UNET_THREADS)
    rdiff_unet_conv_init_f32(float* __restrict__ out, rd_i64 cout, rd_i64 n, rd_i64 hw,
                             const float* __restrict__ bias, const float* __restrict__ bias2,
                             const float* __restrict__ temb, rd_i64 temb_stride,
                             const float* __restrict__ r0, rd_i64 r0_ch,
                             const float* __restrict__ r1) {
    const rd_i64 total = cout * n;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const rd_i64 c = e / n, col = e % n;
        float v = (bias ? bias[c] : 0.0f) + (bias2 ? bias2[c] : 0.0f);
        if (temb) v += temb[(col / hw) * temb_stride + c];
        if (r0) v += c < r0_ch ? r0[e] : r1[(c - r0_ch) * n + col];
        out[e] = v;
    }
}
RDIFF_HOST_EXPORT(rdiff_unet_conv_init_f32)

// NCHW (T) → [c][b][hw] f32, optionally x ↦ 2x − 1 (center_input_sample).
template <class T>
__device__ void rd_unet_nchw_in(const T* __restrict__ x, rd_i64 b, rd_i64 c, rd_i64 hw,
                                float* __restrict__ out, rd_i64 center) {
    const rd_i64 total = b * c * hw;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const rd_i64 p = e % hw, cb = e / hw;
        const rd_i64 bi = cb % b, ci = cb / b;
        float v = rd_to_f32(x[(bi * c + ci) * hw + p]);
        if (center) v = 2.0f * v - 1.0f;
        out[e] = v;
    }
}

// [c][b][hw] f32 → NCHW (T), optionally divided by a per-sample value (Fourier models
// divide the output by the timestep σ).
template <class T>
__device__ void rd_unet_nchw_out(const float* __restrict__ y, rd_i64 b, rd_i64 c, rd_i64 hw,
                                 const float* __restrict__ div, T* __restrict__ out) {
    const rd_i64 total = b * c * hw;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const rd_i64 p = e % hw, bc = e / hw;
        const rd_i64 ci = bc % c, bi = bc / c;
        float v = y[(ci * b + bi) * hw + p];
        if (div) v /= div[bi];
        out[e] = rd_narrow<T>::from(v);
    }
}

// out[c][b][hw] += NCHW x (T): a ControlNet's or T2I-Adapter's residuals (unet/control.rs).
template <class T>
__device__ void rd_unet_nchw_add(const T* __restrict__ x, rd_i64 b, rd_i64 c, rd_i64 hw,
                                 float* __restrict__ out) {
    const rd_i64 total = b * c * hw;
    for (rd_i64 e = rd_thread_index(); e < total; e += rd_grid_stride()) {
        const rd_i64 p = e % hw, cb = e / hw;
        const rd_i64 bi = cb % b, ci = cb / b;
        out[e] += rd_to_f32(x[(bi * c + ci) * hw + p]);
    }
}

#define RD_UNET_LAYOUT(TN, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(RD_UNET_THREADS) rdiff_unet_nchw_in_##TN(     \
        const T* __restrict__ x, rd_i64 b, rd_i64 c, rd_i64 hw, float* __restrict__ out,       \
        rd_i64 center) {                                                                       \
        rd_unet_nchw_in<T>(x, b, c, hw, out, center);                                          \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_unet_nchw_in_##TN)                                                 \
    extern "C" __global__ void __launch_bounds__(RD_UNET_THREADS) rdiff_unet_nchw_out_##TN(    \
        const float* __restrict__ y, rd_i64 b, rd_i64 c, rd_i64 hw,                            \
        const float* __restrict__ div, T* __restrict__ out) {                                  \
        rd_unet_nchw_out<T>(y, b, c, hw, div, out);                                            \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_unet_nchw_out_##TN)                                                \
    extern "C" __global__ void __launch_bounds__(RD_UNET_THREADS) rdiff_unet_nchw_add_##TN(    \
        const T* __restrict__ x, rd_i64 b, rd_i64 c, rd_i64 hw, float* __restrict__ out) {     \
        rd_unet_nchw_add<T>(x, b, c, hw, out);                                                 \
    }                                                                                          \
    RDIFF_HOST_EXPORT(rdiff_unet_nchw_add_##TN)

RD_UNET_LAYOUT(f32, float)
RD_UNET_LAYOUT(f16, rd_f16)
RD_UNET_LAYOUT(bf16, rd_bf16)
