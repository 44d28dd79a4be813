// Philox4x32-10 (Random123's definition) and rdiff's standard-normal stream, the same
// algorithm as src/random/philox.rs line by line (the stream is defined in that module's docs):
// element i of the stream (seed, offset) is lane i % 4 of the Box–Muller transform of
// philox4x32_10(counter = (i/4 lo, i/4 hi, offset lo, offset hi), key = (seed lo, seed hi)).
//
// Every float operation is one of common.cuh's correctly rounded rd_add/rd_sub/rd_mul/rd_div/
// rd_sqrt, which NVRTC never contracts into an FMA, and no libm function is used, so the GPU
// gives the same bits as the CPU path and the emulated launcher. Self-contained apart from
// common.cuh.
#ifndef RDIFF_PHILOX_CUH
#define RDIFF_PHILOX_CUH

#include "common.cuh"


struct rd_philox4 {
    unsigned int v[4];
};

RD_DEV rd_philox4 rd_philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2,
                                   unsigned int c3, unsigned int k0, unsigned int k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned int hi0 = rd_umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const unsigned int hi1 = rd_umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const unsigned int n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    rd_philox4 out = {{c0, c1, c2, c3}};
    return out;
}

// ln u for u in (0, 1) (exponent split, atanh series to s⁹).
RD_DEV float rd_log_unit(float u) {
    const unsigned int bits = rd_f2u(u);
    int e = (int)(bits >> 23) - 127;
    float m = rd_u2f((bits & 0x007fffffu) | 0x3f800000u);
    if (m > rd_u2f(0x3fb504f3u)) {  // √2
        m = rd_mul(m, 0.5f);
        e += 1;
    }
    const float s = rd_div(rd_sub(m, 1.0f), rd_add(m, 1.0f));
    const float s2 = rd_mul(s, s);
    float p = rd_u2f(0x3de38e39u);                      // 1/9
    p = rd_add(rd_mul(p, s2), rd_u2f(0x3e124925u));     // 1/7
    p = rd_add(rd_mul(p, s2), rd_u2f(0x3e4ccccdu));     // 1/5
    p = rd_add(rd_mul(p, s2), rd_u2f(0x3eaaaaabu));     // 1/3
    const float lm = rd_mul(rd_add(s, rd_mul(rd_mul(s, s2), p)), 2.0f);
    const float ef = (float)e;
    return rd_add(rd_mul(ef, rd_u2f(0x3f317200u)), rd_add(lm, rd_mul(ef, rd_u2f(0x35bfbe8eu))));
}

// (cos x, sin x) for |x| ≤ π/4 (Taylor to x¹⁰ / x⁹).
RD_DEV void rd_cos_sin(float x, float* cs, float* sn) {
    const float x2 = rd_mul(x, x);
    float c = rd_u2f(0xb493f27eu);                      // −1/10!
    c = rd_add(rd_mul(c, x2), rd_u2f(0x37d00d01u));     // 1/8!
    c = rd_add(rd_mul(c, x2), rd_u2f(0xbab60b61u));     // −1/6!
    c = rd_add(rd_mul(c, x2), rd_u2f(0x3d2aaaabu));     // 1/4!
    c = rd_add(rd_mul(c, x2), -0.5f);
    *cs = rd_add(rd_mul(c, x2), 1.0f);
    float s = rd_u2f(0x3638ef1du);                      // 1/9!
    s = rd_add(rd_mul(s, x2), rd_u2f(0xb9500d01u));     // −1/7!
    s = rd_add(rd_mul(s, x2), rd_u2f(0x3c088889u));     // 1/5!
    s = rd_add(rd_mul(s, x2), rd_u2f(0xbe2aaaabu));     // −1/3!
    *sn = rd_add(x, rd_mul(rd_mul(x, x2), s));
}

// Two standard normals from two words.
RD_DEV void rd_box_muller(unsigned int a, unsigned int b, float* z0, float* z1) {
    const float u = rd_mul((float)((a >> 9) * 2u + 1u), rd_u2f(0x33800000u));  // ·2⁻²⁴
    const float r = rd_sqrt(-rd_log_unit(u));
    const float t = rd_mul((float)(((b >> 8) & 0x3fffffu) * 2u + 1u), rd_u2f(0x34000000u));
    const float x = rd_mul(rd_sub(t, 0.5f), rd_u2f(0x3fc90fdbu));  // ·π/2
    float c, s;
    rd_cos_sin(x, &c, &s);
    const float p = rd_sub(c, s), q = rd_add(c, s);
    const unsigned int quadrant = b >> 30;
    float cs, sn;
    if (quadrant == 0) {
        cs = p;
        sn = q;
    } else if (quadrant == 1) {
        cs = -q;
        sn = p;
    } else if (quadrant == 2) {
        cs = -p;
        sn = -q;
    } else {
        cs = q;
        sn = -p;
    }
    *z0 = rd_mul(r, cs);
    *z1 = rd_mul(r, sn);
}

// The four normals of lane group g (elements 4g .. 4g+3) of the stream (seed, offset).
struct rd_normal4 {
    float z0, z1, z2, z3;
};

RD_DEV rd_normal4 rd_philox_normals4(rd_u64 seed, rd_u64 offset, rd_u64 g) {
    const rd_philox4 w =
        rd_philox4x32_10((unsigned int)g, (unsigned int)(g >> 32), (unsigned int)offset,
                         (unsigned int)(offset >> 32), (unsigned int)seed,
                         (unsigned int)(seed >> 32));
    rd_normal4 n;
    rd_box_muller(w.v[0], w.v[1], &n.z0, &n.z1);
    rd_box_muller(w.v[2], w.v[3], &n.z2, &n.z3);
    return n;
}

// Lane k (0..3) of a group, by selects (no dynamic register indexing, so no local memory).
RD_DEV float rd_normal_lane(const rd_normal4& n, unsigned int k) {
    return k == 0 ? n.z0 : (k == 1 ? n.z1 : (k == 2 ? n.z2 : n.z3));
}

// Element i of the stream (seed, offset): one Philox call for one element (the scalar tails).
RD_DEV float rd_philox_normal(rd_u64 seed, rd_u64 offset, rd_u64 i) {
    return rd_normal_lane(rd_philox_normals4(seed, offset, i >> 2), (unsigned int)(i & 3u));
}

#endif  // RDIFF_PHILOX_CUH
