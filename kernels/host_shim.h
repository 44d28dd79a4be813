// The CUDA vocabulary the kernels use, for the host: lets kernels/*.cu compile as C++ and run
// under the emulated launcher (src/cuda/emulate). Included by common.cuh when RDIFF_HOST is
// defined; the runtime behind the declarations is src/cuda/emulate/host.cpp.
//
// Model: the launcher runs the blocks of a grid one after another; the threads of a block are
// host threads. threadIdx/blockIdx/blockDim/gridDim are thread-locals the launcher sets;
// __syncthreads is a barrier among the block's threads; RDIFF_SHARED hands every thread of the
// block the same slice of a per-block buffer; warp shuffles go through a per-warp exchange
// buffer between two warp barriers.
#ifndef RDIFF_HOST_SHIM_H
#define RDIFF_HOST_SHIM_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct rdiff_dim3 {
    unsigned int x, y, z;
};

extern thread_local rdiff_dim3 threadIdx, blockIdx, blockDim, gridDim;

// The runtime (host.cpp).
void __syncthreads();
void __syncwarp(unsigned int mask = 0xffffffffu);
void* rdiff_shared_alloc(std::size_t bytes, std::size_t align);
std::uint64_t rdiff_shfl_exchange(std::uint64_t value, int src_lane, bool valid);
unsigned int rdiff_lane();
// Every lane's `n` (at most 8) words, lane-major into all[32·n]: the operands of a warp-wide
// matrix operation (rd_mma_16816 in common.cuh). Called by every lane of a full warp.
void rdiff_warp_share(const std::uint32_t* mine, unsigned int n, std::uint32_t* all);

#define RDIFF_SHARED(type, name, count) \
    type* name = static_cast<type*>(rdiff_shared_alloc(sizeof(type) * (count), alignof(type)))

template <class T>
inline T rdiff_shfl(T v, int src, bool valid) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle type");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = rdiff_shfl_exchange(bits, src, valid);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

template <class T>
inline T __shfl_down_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    const int lane = (int)rdiff_lane();
    return rdiff_shfl(v, lane + (int)delta, (lane % width) + (int)delta < width);
}
template <class T>
inline T __shfl_up_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    const int lane = (int)rdiff_lane();
    return rdiff_shfl(v, lane - (int)delta, (lane % width) >= (int)delta);
}
template <class T>
inline T __shfl_xor_sync(unsigned int, T v, int lane_mask, int width = 32) {
    const int lane = (int)rdiff_lane();
    const int src = lane ^ lane_mask;
    return rdiff_shfl(v, src, (src / width) == (lane / width));
}
template <class T>
inline T __shfl_sync(unsigned int, T v, int src_lane, int width = 32) {
    const int lane = (int)rdiff_lane();
    return rdiff_shfl(v, (lane / width) * width + src_lane % width, true);
}

inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* p, float v) {
    unsigned int* u = reinterpret_cast<unsigned int*>(p);
    unsigned int old = __atomic_load_n(u, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(u, &old, __float_as_uint(__uint_as_float(old) + v), true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return __uint_as_float(old);
}

// Each extern "C" kernel gets a host entry point taking its arguments as an array of pointers
// to the values (the cuLaunchKernel convention) and registers it under the kernel's name.
typedef void (*rdiff_host_fn)(void**);
void rdiff_register(const char* name, rdiff_host_fn fn);

template <class... A, std::size_t... I>
inline void rdiff_call_unpacked(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}
template <class... A>
inline void rdiff_call_packed(void (*f)(A...), void** args) {
    rdiff_call_unpacked(f, args, std::index_sequence_for<A...>{});
}

struct rdiff_registrar {
    rdiff_registrar(const char* name, rdiff_host_fn fn) { rdiff_register(name, fn); }
};

#define RDIFF_HOST_EXPORT(name)                                                     \
    extern "C" void name##_host(void** args) { rdiff_call_packed(&name, args); }    \
    static rdiff_registrar name##_registrar(#name, &name##_host);

#endif  // RDIFF_HOST_SHIM_H
