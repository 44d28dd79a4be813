// rdiff kernels: what every kernel shares. Self-contained (no CUDA toolkit headers), so NVRTC
// compiles it with no include path, and with RDIFF_HOST defined the same text compiles as C++
// for the emulated launcher (src/cuda/emulate), through host_shim.h.
//
// Rules for kernels (what the emulation models):
//   * shared arrays only through RDIFF_SHARED(type, name, count);
//   * __syncthreads and warp shuffles reached by every thread of the block / warp (no early
//     return before a barrier), full-warp masks, block sizes a multiple of 32;
//   * no inline PTX outside the conversion and tensor-core helpers below, which have a host
//     branch;
//   * every extern "C" kernel is followed by RDIFF_HOST_EXPORT(name).
#ifndef RDIFF_COMMON_CUH
#define RDIFF_COMMON_CUH

#ifdef RDIFF_HOST
#include "host_shim.h"
#else
#define RDIFF_SHARED(type, name, count) __shared__ type name[count]
#define RDIFF_HOST_EXPORT(name)
#endif

#define RD_DEV __device__ __forceinline__

typedef unsigned long long rd_u64;
typedef long long rd_i64;

// Storage types: 16 bits each, distinct so templates can tell them apart.
struct rd_f16 {
    unsigned short bits;
};
struct rd_bf16 {
    unsigned short bits;
};

// 16 bytes, for vector loads and stores (ld.global.v4 / st.global.v4).
struct alignas(16) rd_u4 {
    unsigned int x, y, z, w;
};

// --- f32 <-> f16 / bf16, round to nearest even --------------------------------------------
// Device: one cvt instruction each (cvt.rn.bf16.f32 needs sm_80, our oldest target).
// Host (and RDIFF_SOFT_CONVERT on the device): the same results by bit manipulation.
#if defined(RDIFF_HOST) || defined(RDIFF_SOFT_CONVERT)
#define RD_SOFT 1
#endif

RD_DEV unsigned int rd_f2u(float f) { return __float_as_uint(f); }
RD_DEV float rd_u2f(unsigned int u) { return __uint_as_float(u); }

RD_DEV float rd_f16_to_f32(unsigned short h) {
#ifdef RD_SOFT
    // F. Giesen's half_to_float: exponent rebias, subnormals through one exact subtraction.
    const unsigned int shifted_exp = 0x7c00u << 13;
    unsigned int o = (unsigned int)(h & 0x7fffu) << 13;
    const unsigned int exp = shifted_exp & o;
    o += (127u - 15u) << 23;
    if (exp == shifted_exp) {
        o += (128u - 16u) << 23;  // Inf / NaN
    } else if (exp == 0) {
        o += 1u << 23;  // zero / subnormal: renormalise
        o = rd_f2u(rd_u2f(o) - rd_u2f(113u << 23));
    }
    return rd_u2f(o | ((unsigned int)(h & 0x8000u) << 16));
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

RD_DEV unsigned short rd_f32_to_f16(float f) {
#ifdef RD_SOFT
    // F. Giesen's float_to_half_fast3_rtne.
    unsigned int u = rd_f2u(f);
    const unsigned int sign = u & 0x80000000u;
    u ^= sign;
    unsigned int o;
    if (u >= ((127u + 16u) << 23)) {
        o = (u > (255u << 23)) ? 0x7e00u : 0x7c00u;  // NaN -> quiet NaN, too big -> Inf
    } else if (u < (113u << 23)) {
        // Subnormal or zero: one float addition rounds the 10 mantissa bits into place.
        const unsigned int magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
        o = rd_f2u(rd_u2f(u) + rd_u2f(magic)) - magic;
    } else {
        const unsigned int mant_odd = (u >> 13) & 1u;
        u += ((unsigned int)(15 - 127) << 23) + 0xfffu;
        u += mant_odd;
        o = u >> 13;
    }
    return (unsigned short)(o | (sign >> 16));
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

RD_DEV float rd_bf16_to_f32(unsigned short h) { return rd_u2f((unsigned int)h << 16); }

RD_DEV unsigned short rd_f32_to_bf16(float f) {
#ifdef RD_SOFT
    const unsigned int u = rd_f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x40u);  // NaN stays a quiet NaN
    }
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
#else
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

// Typed widening / narrowing, overloaded on the storage type.
RD_DEV float rd_to_f32(float v) { return v; }
RD_DEV float rd_to_f32(rd_f16 v) { return rd_f16_to_f32(v.bits); }
RD_DEV float rd_to_f32(rd_bf16 v) { return rd_bf16_to_f32(v.bits); }

template <class T>
struct rd_narrow;
template <>
struct rd_narrow<float> {
    static RD_DEV float from(float v) { return v; }
};
template <>
struct rd_narrow<rd_f16> {
    static RD_DEV rd_f16 from(float v) {
        rd_f16 r;
        r.bits = rd_f32_to_f16(v);
        return r;
    }
};
template <>
struct rd_narrow<rd_bf16> {
    static RD_DEV rd_bf16 from(float v) {
        rd_bf16 r;
        r.bits = rd_f32_to_bf16(v);
        return r;
    }
};

// The value a float takes once stored as T and read back (what the history entry holds).
template <class T>
RD_DEV float rd_round_trip(float v) {
    return rd_to_f32(rd_narrow<T>::from(v));
}

// --- arithmetic with the CPU path's bits -------------------------------------------------
// Correctly rounded operations that NVRTC never contracts into FMAs (the host build is
// compiled with -ffp-contract=off): a kernel written with these computes what the CPU loop
// computes, bit for bit, on the emulated launcher and on a GPU alike.
#ifdef RDIFF_HOST
RD_DEV float rd_add(float a, float b) { return a + b; }
RD_DEV float rd_sub(float a, float b) { return a - b; }
RD_DEV float rd_mul(float a, float b) { return a * b; }
RD_DEV float rd_div(float a, float b) { return a / b; }
RD_DEV float rd_sqrt(float a) { return std::sqrt(a); }
RD_DEV double rd_dadd(double a, double b) { return a + b; }
RD_DEV double rd_dmul(double a, double b) { return a * b; }
RD_DEV double rd_ddiv(double a, double b) { return a / b; }
RD_DEV double rd_dsqrt(double a) { return std::sqrt(a); }
RD_DEV unsigned int rd_umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((rd_u64)a * b) >> 32);
}
#else
RD_DEV float rd_add(float a, float b) { return __fadd_rn(a, b); }
RD_DEV float rd_sub(float a, float b) { return __fsub_rn(a, b); }
RD_DEV float rd_mul(float a, float b) { return __fmul_rn(a, b); }
RD_DEV float rd_div(float a, float b) { return __fdiv_rn(a, b); }
RD_DEV float rd_sqrt(float a) { return __fsqrt_rn(a); }
RD_DEV double rd_dadd(double a, double b) { return __dadd_rn(a, b); }
RD_DEV double rd_dmul(double a, double b) { return __dmul_rn(a, b); }
RD_DEV double rd_ddiv(double a, double b) { return __ddiv_rn(a, b); }
RD_DEV double rd_dsqrt(double a) { return __dsqrt_rn(a); }
RD_DEV unsigned int rd_umulhi(unsigned int a, unsigned int b) { return __umulhi(a, b); }
#endif

// --- vector loads and stores -----------------------------------------------------------
template <class T>
union rd_vec16 {
    rd_u4 raw;
    T e[16 / sizeof(T)];
};

RD_DEV bool rd_aligned16(const void* p) { return (((rd_u64)p) & 15u) == 0; }

// V elements of T from p (16-byte aligned) widened to f32; V·sizeof(T) a multiple of 16.
template <class T, int V>
RD_DEV void rd_load(const T* __restrict__ p, float* out) {
    constexpr int E = 16 / sizeof(T);
    static_assert(V % E == 0, "vector width must fill whole 16-byte chunks");
    const rd_u4* q = reinterpret_cast<const rd_u4*>(p);
#pragma unroll
    for (int c = 0; c < V / E; ++c) {
        rd_vec16<T> u;
        u.raw = q[c];
#pragma unroll
        for (int k = 0; k < E; ++k) out[c * E + k] = rd_to_f32(u.e[k]);
    }
}

template <class T, int V>
RD_DEV void rd_store(T* __restrict__ p, const float* in) {
    constexpr int E = 16 / sizeof(T);
    static_assert(V % E == 0, "vector width must fill whole 16-byte chunks");
    rd_u4* q = reinterpret_cast<rd_u4*>(p);
#pragma unroll
    for (int c = 0; c < V / E; ++c) {
        rd_vec16<T> u;
#pragma unroll
        for (int k = 0; k < E; ++k) u.e[k] = rd_narrow<T>::from(in[c * E + k]);
        q[c] = u.raw;
    }
}

// 4 elements of T (16 bytes of f32, 8 of f16/bf16) from p (aligned to that size), widened.
struct alignas(8) rd_u2 {
    unsigned int x, y;
};
template <int Bytes>
struct rd_raw4;
template <>
struct rd_raw4<16> {
    typedef rd_u4 type;
};
template <>
struct rd_raw4<8> {
    typedef rd_u2 type;
};
template <class T>
union rd_vec4 {
    typename rd_raw4<4 * sizeof(T)>::type raw;
    T e[4];
};

RD_DEV bool rd_aligned(const void* p, unsigned int bytes) { return (((rd_u64)p) % bytes) == 0; }

template <class T>
RD_DEV void rd_load4(const T* __restrict__ p, float* out) {
    rd_vec4<T> u;
    u.raw = *reinterpret_cast<const typename rd_raw4<4 * sizeof(T)>::type*>(p);
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = rd_to_f32(u.e[k]);
}

template <class T>
RD_DEV void rd_store4(T* __restrict__ p, const float* in) {
    rd_vec4<T> u;
#pragma unroll
    for (int k = 0; k < 4; ++k) u.e[k] = rd_narrow<T>::from(in[k]);
    *reinterpret_cast<typename rd_raw4<4 * sizeof(T)>::type*>(p) = u.raw;
}

// Elements per vector iteration for a kernel whose narrowest stream has `bytes`-byte elements.
template <class A, class B>
struct rd_width {
    static constexpr int value = 16 / (sizeof(A) < sizeof(B) ? sizeof(A) : sizeof(B));
};

// --- reductions -----------------------------------------------------------------------
RD_DEV float rd_warp_sum(float v) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
    return v;
}

// --- tensor cores -----------------------------------------------------------------------
// C += A·B for one warp's 16×16 by 16×8 tile (mma.sync m16n8k16, sm_80+): A and B in the
// 16-bit type of the tag (rd_bf16 or rd_f16), the products summed into f32. The operands are
// in PTX's fragment layout, with g = lane / 4 and t = lane % 4, two 16-bit values a word (the
// lower index in the low half):
//   a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]
//   a[3] = A[g+8][2t+8, 2t+9]   b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// Every lane of a full warp calls it. The host branch gathers the warp's operands and sums
// each element's 16 products in order (a tensor core's order and internal precision are its
// own; the tests' tolerance allows for them).
#ifdef RDIFF_HOST
// The host branches' warp product: gathers every lane's a and b words (a[0..3], b[0..1]) and
// adds to each of the lane's C elements (row r, column n, as rd_mma_16816 lays them out) its
// dot product dot(all, r, n), where all[6·lane + word] holds the warp's operands.
template <class Dot>
inline void rd_mma_host(float* c, const unsigned int* a, const unsigned int* b, Dot dot) {
    const unsigned int mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    unsigned int all[32 * 6];
    rdiff_warp_share(mine, 6, all);
    const int lane = (int)rdiff_lane(), g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; ++e) c[e] += dot(all, g + (e >> 1) * 8, 2 * t + (e & 1));
}
template <class T>
inline void rd_mma_16816(T, float* c, const unsigned int* a, const unsigned int* b) {
    rd_mma_host(c, a, b, [](const unsigned int* all, int r, int n) {
        float s = 0.0f;
        for (int k = 0; k < 16; ++k) {
            // A[r][k] is in lane 4·(r mod 8) + (k mod 8)/2, word a[(k / 8)·2 + r / 8];
            // B[k][n] in lane 4·n + (k mod 8)/2, word b[k / 8]; the half is k mod 2.
            const int from = (k & 7) >> 1, shift = (k & 1) * 16;
            const unsigned int aw = all[(4 * (r & 7) + from) * 6 + (k >> 3) * 2 + (r >> 3)];
            const unsigned int bw = all[(4 * n + from) * 6 + 4 + (k >> 3)];
            s += rd_to_f32(T{(unsigned short)(aw >> shift)}) *
                 rd_to_f32(T{(unsigned short)(bw >> shift)});
        }
        return s;
    });
}
#else
RD_DEV void rd_mma_16816(rd_bf16, float* c, const unsigned int* a, const unsigned int* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
RD_DEV void rd_mma_16816(rd_f16, float* c, const unsigned int* a, const unsigned int* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// Two f32 rounded to the tag's 16-bit type (to nearest even), packed as a fragment word (x in
// the low half). Device: one cvt for both (its first source goes to the upper half).
RD_DEV unsigned int rd_pack16(rd_bf16, float x, float y) {
#ifdef RD_SOFT
    return (unsigned int)rd_f32_to_bf16(x) | ((unsigned int)rd_f32_to_bf16(y) << 16);
#else
    unsigned int w;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(y), "f"(x));
    return w;
#endif
}
RD_DEV unsigned int rd_pack16(rd_f16, float x, float y) {
#ifdef RD_SOFT
    return (unsigned int)rd_f32_to_f16(x) | ((unsigned int)rd_f32_to_f16(y) << 16);
#else
    unsigned int w;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(y), "f"(x));
    return w;
#endif
}

// An f32 rounded to tf32 (10 mantissa bits) to nearest, ties away from zero, as
// cvt.rna.tf32.f32 rounds (inf and NaN kept), in f32's layout with the low 13 bits zero: the
// TF32 tensor cores read only the upper 19 bits, and drop the rest unrounded.
RD_DEV float rd_round_tf32(float v) {
    const unsigned int u = rd_f2u(v);
    return (u & 0x7f800000u) == 0x7f800000u ? v : rd_u2f((u + 0x1000u) & 0xffffe000u);
}

// C += A·B for one warp's 16×8 by 8×8 tile on the TF32 tensor cores (mma.sync m16n8k8,
// sm_80+): A and B as f32 bits (their low 13 bits ignored), the products summed into f32.
// Fragments, with g = lane / 4 and t = lane % 4, one value a word:
//   a[0] = A[g][t]   a[1] = A[g+8][t]   a[2] = A[g][t+4]   a[3] = A[g+8][t+4]
//   b[0] = B[t][g]   b[1] = B[t+4][g]   c as rd_mma_16816's
// Every lane of a full warp calls it; the host branch sums each element's 8 products in order.
#ifdef RDIFF_HOST
inline void rd_mma_1688_tf32(float* c, const unsigned int* a, const unsigned int* b) {
    rd_mma_host(c, a, b, [](const unsigned int* all, int r, int n) {
        float s = 0.0f;
        for (int k = 0; k < 8; ++k) {
            // A[r][k] is in lane 4·(r mod 8) + k mod 4, word (k / 4)·2 + r / 8; B[k][n] in
            // lane 4·n + k mod 4, word k / 4.
            const unsigned int aw = all[(4 * (r & 7) + (k & 3)) * 6 + (k >> 2) * 2 + (r >> 3)];
            const unsigned int bw = all[(4 * n + (k & 3)) * 6 + 4 + (k >> 2)];
            s += rd_u2f(aw & 0xffffe000u) * rd_u2f(bw & 0xffffe000u);
        }
        return s;
    });
}
#else
RD_DEV void rd_mma_1688_tf32(float* c, const unsigned int* a, const unsigned int* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// Grid-stride index helpers (64-bit: a step may cover more than 2^31 elements).
RD_DEV rd_i64 rd_thread_index() { return (rd_i64)blockIdx.x * blockDim.x + threadIdx.x; }
RD_DEV rd_i64 rd_grid_stride() { return (rd_i64)gridDim.x * blockDim.x; }

#endif  // RDIFF_COMMON_CUH
