// The fused pass every scheduler step and sampler runs (formula in src/lincomb.rs; the CPU
// loop it equals bit for bit is src/cpu/lincomb.rs, operation for operation):
//   e   = (p·x + q·mo) / d;  e = clamp(e, lo, hi)  or  clamp(e, −s_b, s_b)/s_b
//   m   = r·x + w·e                      → hist (dtype D), then read back rounded
//   g   = (h1·x + h2·z) / h3, z = m or mo
//   y   = a·u + wm·m + wg·g + Σ c_i·t_i
//   out = y + σ·n                               → out (dtype D), or with a chain (UniPC):
//   mid = y                                     → mid (dtype S), then read back rounded
//   out = a2·ŷ + (wm2·m + Σ c2_i·t_i) + σ·n     → out (dtype D)
// With element weights (RD_LC_ELEM, DPM-Solver-v3) a weight may be its scalar times a row of
// coef (per_sample floats shared by the batch; rows[slot] < 0: the scalar alone), and y and
// the chained sum get a bias row after the terms; such passes take the scalar path:
//   m = rd_mul(r, R[e])·x + w·e,  y = rd_mul(a, A[e])·u + … + Σ rd_mul(c_i, C_i[e])·t_i + BIAS[e]
//   (the weight first, then weight × value; the bias added last, before the chain and noise).
// x and u have dtype S; mo, the terms, hist and out dtype D; the noise n is float32 or drawn
// from the Philox stream; σ is a scalar or read from mo's variance channels (mo + per_sample).
// Every operation is a correctly rounded rd_* (no FMA contraction), so a GPU computes the CPU
// path's bits, except the exp of the learned-range σ (CUDA's expf is not glibc's).
// Grid: (blocks, batch); blockIdx.y is the sample, blocks stride over its elements, 4 at a
// time (16-byte loads of f32, 8-byte of f16/bf16) when every row pointer is aligned for that
// (and, for Philox noise, the row starts on a lane group), then a scalar tail.
#include "common.cuh"
#include "philox.cuh"

#define RD_LC_MAX_TERMS 4

// flags (src/cuda/lincomb.rs builds them)
#define RD_LC_CONV (1 << 0)
#define RD_LC_DIVIDE (1 << 1)
#define RD_LC_RANGE (1 << 2)
#define RD_LC_DYNAMIC (1 << 3)
#define RD_LC_AFFINE (1 << 4)
#define RD_LC_RECOMPUTE (1 << 5)
#define RD_LC_FROM_M (1 << 6)
#define RD_LC_BASE (1 << 7)
#define RD_LC_NOISE (1 << 8)
#define RD_LC_PHILOX (1 << 9)
#define RD_LC_LEARNED (1 << 10)
#define RD_LC_LEARNED_RANGE (1 << 11)
#define RD_LC_CHAIN (1 << 12)
#define RD_LC_ELEM (1 << 13)

// element-weight slots (src/lincomb.rs `slot`)
#define RD_LC_W_R 0
#define RD_LC_W_A 1
#define RD_LC_W_WM 2
#define RD_LC_W_C 3
#define RD_LC_W_BIAS 7
#define RD_LC_W_A2 8
#define RD_LC_W_WM2 9
#define RD_LC_W_C2 10
#define RD_LC_W_BIAS2 14
#define RD_LC_W_COUNT 15

// The launch's arguments, passed by value: mirrors `LincombArgs` in src/cuda/lincomb.rs
// (8-byte fields first, then 4-byte ones, so neither side pads).
struct rd_lincomb_args {
    const void* x;
    const void* mo;
    const void* base;
    const void* terms[RD_LC_MAX_TERMS];
    const float* noise;
    const float* bounds;
    void* hist;
    void* out;
    void* mid;
    const float* coef;
    rd_i64 mo_stride;
    rd_i64 per_sample;
    rd_u64 seed;
    rd_u64 offset;
    float p, q, d, lo, hi, r, w, wm;
    float h1, h2, h3, wg;
    float a;
    float c[RD_LC_MAX_TERMS];
    float a2, wm2;
    float c2[RD_LC_MAX_TERMS];
    float sigma, min_log, max_log;
    int flags;
    int nterms;
    int rows[RD_LC_W_COUNT];
    int pad;
};
static_assert(sizeof(rd_lincomb_args) == 312, "rd_lincomb_args mirrors LincombArgs");

// The weight of `slot` at element i: the scalar w, times its coefficient row when it has one.
RD_DEV float rd_lc_w(const rd_lincomb_args& a, int slot, float w, rd_i64 i) {
    if (!(a.flags & RD_LC_ELEM) || a.rows[slot] < 0) return w;
    return rd_mul(w, a.coef[(rd_i64)a.rows[slot] * a.per_sample + i]);
}

// The bias row of `slot` at element i (0 without one).
RD_DEV float rd_lc_bias(const rd_lincomb_args& a, int slot, rd_i64 i) {
    if (!(a.flags & RD_LC_ELEM) || a.rows[slot] < 0) return 0.0f;
    return a.coef[(rd_i64)a.rows[slot] * a.per_sample + i];
}

// e of one element: the conversion and its bound (r: the conversion's r at this element).
RD_DEV float rd_lc_e(const rd_lincomb_args& a, float x, float mo, float s, float inv, float neg,
                     float r) {
    float e = rd_add(rd_mul(a.p, x), rd_mul(a.q, mo));
    if (a.flags & RD_LC_DIVIDE) e = rd_div(e, a.d);
    if (a.flags & RD_LC_RANGE) {
        // torch.clamp's order (max, then min); comparisons keep NaN as the CPU path does.
        e = e < a.lo ? a.lo : e;
        e = e > a.hi ? a.hi : e;
    } else if (a.flags & RD_LC_DYNAMIC) {
        const float c = e > s ? s : (e < neg ? neg : e);
        e = rd_mul(c, inv);
    }
    if (a.flags & RD_LC_AFFINE) e = rd_add(rd_mul(r, x), rd_mul(a.w, e));
    return e;
}

// g of one element.
RD_DEV float rd_lc_g(const rd_lincomb_args& a, float x, float m, float mo) {
    const float z = (a.flags & RD_LC_FROM_M) ? m : mo;
    return rd_div(rd_add(rd_mul(a.h1, x), rd_mul(a.h2, z)), a.h3);
}

// The noise's standard deviation for one element (v: the variance channel).
RD_DEV float rd_lc_std(const rd_lincomb_args& a, float v) {
    if (a.flags & RD_LC_LEARNED) return rd_sqrt(v);
    if (a.flags & RD_LC_LEARNED_RANGE) {
        const float f = rd_mul(rd_add(v, 1.0f), 0.5f);
        const float lv = rd_add(rd_mul(f, a.max_log), rd_mul(rd_sub(1.0f, f), a.min_log));
        return expf(rd_mul(0.5f, lv));
    }
    return a.sigma;
}

template <class D, class S>
__device__ void rd_lincomb(const rd_lincomb_args& a) {
    const rd_i64 b = blockIdx.y;
    const rd_i64 ps = a.per_sample;
    const rd_i64 row = b * ps;
    const int f = a.flags;
    const bool conv = (f & RD_LC_CONV) != 0;
    const S* x = conv ? static_cast<const S*>(a.x) + row : nullptr;
    const D* mo = conv ? static_cast<const D*>(a.mo) + b * a.mo_stride : nullptr;
    const S* u = (f & RD_LC_BASE) ? static_cast<const S*>(a.base) + row : nullptr;
    const float* noise = (f & RD_LC_NOISE) ? a.noise + row : nullptr;
    const bool philox = (f & RD_LC_PHILOX) != 0;
    const bool learned = (f & (RD_LC_LEARNED | RD_LC_LEARNED_RANGE)) != 0;
    D* hist = a.hist ? static_cast<D*>(a.hist) + row : nullptr;
    D* out = static_cast<D*>(a.out) + row;
    const bool chain = (f & RD_LC_CHAIN) != 0;
    S* mid = chain ? static_cast<S*>(a.mid) + row : nullptr;
    const float s = (f & RD_LC_DYNAMIC) ? a.bounds[b] : 1.0f;
    const float inv = rd_div(1.0f, s);
    const float neg = rd_sub(0.0f, s);
    const unsigned int vd = 4 * sizeof(D), vs = 4 * sizeof(S);
    bool aligned = rd_aligned(out, vd) && (!hist || rd_aligned(hist, vd)) &&
                   (!mid || rd_aligned(mid, vs)) &&
                   (!conv || (rd_aligned(x, vs) && rd_aligned(mo, vd) &&
                              (!learned || rd_aligned(mo + ps, vd)))) &&
                   (!u || rd_aligned(u, vs)) && (!noise || rd_aligned(noise, 16)) &&
                   (!philox || (row & 3) == 0);
    for (int j = 0; j < a.nterms; ++j) {
        aligned = aligned && rd_aligned(static_cast<const D*>(a.terms[j]) + row, vd);
    }
    // element-weight passes (DPM-Solver-v3) take the scalar path below
    const rd_i64 nvec = (aligned && !(f & RD_LC_ELEM)) ? ps / 4 : 0;
    const rd_i64 t0 = rd_thread_index();
    const rd_i64 stride = rd_grid_stride();
    for (rd_i64 v = t0; v < nvec; v += stride) {
        const rd_i64 i = v * 4;
        float xv[4] = {}, ev[4] = {}, tv[4] = {}, acc[4], zv[4] = {};
        if (conv) {
            rd_load4<S>(x + i, xv);
            rd_load4<D>(mo + i, tv);
#pragma unroll
            for (int k = 0; k < 4; ++k) ev[k] = rd_lc_e(a, xv[k], tv[k], s, inv, neg, a.r);
            if (hist) {
                rd_store4<D>(hist + i, ev);
#pragma unroll
                for (int k = 0; k < 4; ++k) ev[k] = rd_round_trip<D>(ev[k]);
            }
            if (f & RD_LC_RECOMPUTE) {
#pragma unroll
                for (int k = 0; k < 4; ++k) tv[k] = rd_lc_g(a, xv[k], ev[k], tv[k]);
            }
        }
        if (u) {
            rd_load4<S>(u + i, xv);
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[k] = rd_mul(a.a, xv[k]);
        } else {
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[k] = 0.0f;
        }
        if (conv) {
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[k] = rd_add(acc[k], rd_mul(a.wm, ev[k]));
            if (f & RD_LC_RECOMPUTE) {
#pragma unroll
                for (int k = 0; k < 4; ++k) acc[k] = rd_add(acc[k], rd_mul(a.wg, tv[k]));
            }
        }
        if (chain && conv) {
#pragma unroll
            for (int k = 0; k < 4; ++k) zv[k] = rd_mul(a.wm2, ev[k]);
        }
        for (int j = 0; j < a.nterms; ++j) {
            rd_load4<D>(static_cast<const D*>(a.terms[j]) + row + i, xv);
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[k] = rd_add(acc[k], rd_mul(a.c[j], xv[k]));
            if (chain) {
#pragma unroll
                for (int k = 0; k < 4; ++k) zv[k] = rd_add(zv[k], rd_mul(a.c2[j], xv[k]));
            }
        }
        if (chain) {
            rd_store4<S>(mid + i, acc);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                acc[k] = rd_add(rd_mul(a.a2, rd_round_trip<S>(acc[k])), zv[k]);
            }
        }
        if (noise || philox) {
            if (noise) {
                rd_load4<float>(noise + i, xv);
            } else {
                const rd_normal4 n = rd_philox_normals4(a.seed, a.offset, (rd_u64)(row + i) >> 2);
                xv[0] = n.z0;
                xv[1] = n.z1;
                xv[2] = n.z2;
                xv[3] = n.z3;
            }
            if (learned) rd_load4<D>(mo + ps + i, ev);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                acc[k] = rd_add(acc[k], rd_mul(rd_lc_std(a, learned ? ev[k] : 0.0f), xv[k]));
            }
        }
        rd_store4<D>(out + i, acc);
    }
    for (rd_i64 i = nvec * 4 + t0; i < ps; i += stride) {
        float e = 0.0f, g = 0.0f, acc = 0.0f;
        if (conv) {
            const float xv = rd_to_f32(x[i]);
            const float mv = rd_to_f32(mo[i]);
            e = rd_lc_e(a, xv, mv, s, inv, neg, rd_lc_w(a, RD_LC_W_R, a.r, i));
            if (hist) {
                const D h = rd_narrow<D>::from(e);
                hist[i] = h;
                e = rd_to_f32(h);
            }
            if (f & RD_LC_RECOMPUTE) g = rd_lc_g(a, xv, e, mv);
        }
        if (u) acc = rd_mul(rd_lc_w(a, RD_LC_W_A, a.a, i), rd_to_f32(u[i]));
        if (conv) {
            acc = rd_add(acc, rd_mul(rd_lc_w(a, RD_LC_W_WM, a.wm, i), e));
            if (f & RD_LC_RECOMPUTE) acc = rd_add(acc, rd_mul(a.wg, g));
        }
        float z = (chain && conv) ? rd_mul(rd_lc_w(a, RD_LC_W_WM2, a.wm2, i), e) : 0.0f;
        for (int j = 0; j < a.nterms; ++j) {
            const D* t = static_cast<const D*>(a.terms[j]) + row;
            const float tv = rd_to_f32(t[i]);
            acc = rd_add(acc, rd_mul(rd_lc_w(a, RD_LC_W_C + j, a.c[j], i), tv));
            if (chain) z = rd_add(z, rd_mul(rd_lc_w(a, RD_LC_W_C2 + j, a.c2[j], i), tv));
        }
        if (f & RD_LC_ELEM) {
            acc = rd_add(acc, rd_lc_bias(a, RD_LC_W_BIAS, i));
            if (chain) z = rd_add(z, rd_lc_bias(a, RD_LC_W_BIAS2, i));
        }
        if (chain) {
            const S y = rd_narrow<S>::from(acc);
            mid[i] = y;
            acc = rd_add(rd_mul(rd_lc_w(a, RD_LC_W_A2, a.a2, i), rd_to_f32(y)), z);
        }
        if (noise || philox) {
            const float n =
                noise ? noise[i] : rd_philox_normal(a.seed, a.offset, (rd_u64)(row + i));
            const float std = rd_lc_std(a, learned ? rd_to_f32(mo[ps + i]) : 0.0f);
            acc = rd_add(acc, rd_mul(std, n));
        }
        out[i] = rd_narrow<D>::from(acc);
    }
}

// At most 64 registers (4 blocks of 256 per SM): the chain's second sum pushed the f16
// instantiations to 80 unbounded; bounded, ptxas fits them with no spills (tests/test_cuda.py).
#define RD_LINCOMB(DN, D, SN, S)                                                              \
    extern "C" __global__ void __launch_bounds__(256, 4)                                      \
        rdiff_lincomb_##DN##_##SN(const rd_lincomb_args args) {                               \
        rd_lincomb<D, S>(args);                                                               \
    }                                                                                         \
    RDIFF_HOST_EXPORT(rdiff_lincomb_##DN##_##SN)

RD_LINCOMB(f32, float, f32, float)
RD_LINCOMB(f32, float, f16, rd_f16)
RD_LINCOMB(f32, float, bf16, rd_bf16)
RD_LINCOMB(f16, rd_f16, f32, float)
RD_LINCOMB(f16, rd_f16, f16, rd_f16)
RD_LINCOMB(f16, rd_f16, bf16, rd_bf16)
RD_LINCOMB(bf16, rd_bf16, f32, float)
RD_LINCOMB(bf16, rd_bf16, f16, rd_f16)
RD_LINCOMB(bf16, rd_bf16, bf16, rd_bf16)
