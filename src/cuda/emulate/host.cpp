// The host runtime of the emulated launcher, and every kernel compiled as C++ (build.rs).
//
// A "block" object holds what the threads of one CUDA block share: a barrier for
// __syncthreads, the shared-memory buffer, and one exchange buffer plus barrier per warp.
// The Rust launcher (src/cuda/emulate/mod.rs) creates one per launch, runs the blocks one
// after another on blockDim host threads, and calls rdiff_emu_enter on each thread before the
// kernel so that the thread-locals below describe that thread.
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "host_shim.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
// Under AddressSanitizer (scripts/sanitize_kernels.sh) every shared array sits between
// poisoned gaps and the unused rest of the buffer stays poisoned, so an index past an array's
// end is reported where a GPU would read the next array silently (or fault).
constexpr std::size_t kSharedRedzone = 64;
constexpr std::size_t kSharedArraysMax = 32;
#define RDIFF_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define RDIFF_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
constexpr std::size_t kSharedRedzone = 0;
constexpr std::size_t kSharedArraysMax = 0;
#define RDIFF_POISON(p, n) ((void)(p), (void)(n))
#define RDIFF_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

thread_local rdiff_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace {

class Barrier {
   public:
    explicit Barrier(unsigned int n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lock(m_);
        const unsigned long long gen = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return gen_ != gen; });
        }
    }

   private:
    std::mutex m_;
    std::condition_variable cv_;
    unsigned int n_;
    unsigned int count_ = 0;
    unsigned long long gen_ = 0;
};

struct Warp {
    explicit Warp(unsigned int n) : barrier(n) {}
    Barrier barrier;
    std::uint64_t slots[32] = {};
    std::uint32_t words[32 * 8] = {};
};

// Static shared memory a block may declare (48 KiB, the CUDA limit without opt-in).
constexpr std::size_t kStaticShared = 48 * 1024;

struct Block {
    Block(unsigned int threads, std::size_t dynamic_shared)
        : threads(threads),
          barrier(threads),
          shared(kStaticShared + dynamic_shared + kSharedRedzone * (kSharedArraysMax + 1)) {
        RDIFF_POISON(shared.data(), shared.size());
        for (unsigned int w = 0; w * 32 < threads; ++w) {
            const unsigned int n = threads - w * 32 < 32 ? threads - w * 32 : 32;
            warps.emplace_back(new Warp(n));
        }
    }
    ~Block() {
        RDIFF_UNPOISON(shared.data(), shared.size());
        for (Warp* w : warps) delete w;
    }
    unsigned int threads;
    Barrier barrier;
    std::vector<unsigned char> shared;
    std::vector<Warp*> warps;
    bool overflow = false;
};

thread_local Block* tl_block = nullptr;
thread_local unsigned int tl_tid = 0;
thread_local std::size_t tl_shared_cursor = 0;
thread_local std::size_t tl_shared_arrays = 0;

std::vector<std::pair<std::string, rdiff_host_fn>>& registry() {
    static std::vector<std::pair<std::string, rdiff_host_fn>> r;
    return r;
}

}  // namespace

void rdiff_register(const char* name, rdiff_host_fn fn) { registry().emplace_back(name, fn); }

void __syncthreads() { tl_block->barrier.wait(); }

// A barrier of the calling thread's warp (the mask is always the full warp in rdiff's kernels).
void __syncwarp(unsigned int) { tl_block->warps[tl_tid >> 5]->barrier.wait(); }

unsigned int rdiff_lane() { return tl_tid & 31u; }

void* rdiff_shared_alloc(std::size_t bytes, std::size_t align) {
    // Every thread runs the same declarations in the same order, so every thread's cursor
    // lands on the same offsets: one instance per block.
    std::size_t at = (tl_shared_cursor + align - 1) / align * align;
    if (at + bytes > kStaticShared) {
        tl_block->overflow = true;  // reported by rdiff_emu_block_overflowed
        at = 0;
    }
    tl_shared_cursor = at + bytes;
    // Under ASan, each array one redzone further on (the limit above stays CUDA's).
    const std::size_t gaps = ++tl_shared_arrays;
    if (kSharedRedzone != 0 && gaps > kSharedArraysMax) std::abort();
    unsigned char* p = tl_block->shared.data() + at + kSharedRedzone * gaps;
    RDIFF_UNPOISON(p, bytes);
    return p;
}

std::uint64_t rdiff_shfl_exchange(std::uint64_t value, int src_lane, bool valid) {
    Warp* w = tl_block->warps[tl_tid >> 5];
    const unsigned int lane = tl_tid & 31u;
    w->slots[lane] = value;
    w->barrier.wait();
    // A lane outside the (possibly partial) warp reads its own value, as hardware does for an
    // out-of-range source.
    const unsigned int warp_threads = tl_block->threads - (tl_tid & ~31u);
    std::uint64_t out = value;
    if (valid && src_lane >= 0 && (unsigned int)src_lane < 32 &&
        (unsigned int)src_lane < warp_threads) {
        out = w->slots[src_lane];
    }
    w->barrier.wait();
    return out;
}

void rdiff_warp_share(const std::uint32_t* mine, unsigned int n, std::uint32_t* all) {
    Warp* w = tl_block->warps[tl_tid >> 5];
    const unsigned int lane = tl_tid & 31u;
    if (n > 8) std::abort();  // a kernel bug: the buffer holds 8 words a lane
    std::memcpy(w->words + lane * n, mine, n * sizeof(std::uint32_t));
    w->barrier.wait();
    std::memcpy(all, w->words, 32 * n * sizeof(std::uint32_t));
    w->barrier.wait();  // every lane has read before any lane writes again
}

extern "C" {

rdiff_host_fn rdiff_emu_lookup(const char* name) {
    for (auto& e : registry()) {
        if (e.first == name) return e.second;
    }
    return nullptr;
}

std::size_t rdiff_emu_kernel_count() { return registry().size(); }

const char* rdiff_emu_kernel_name(std::size_t i) { return registry()[i].first.c_str(); }

void* rdiff_emu_block_new(unsigned int threads, std::size_t dynamic_shared) {
    return new Block(threads, dynamic_shared);
}

void rdiff_emu_block_free(void* block) { delete static_cast<Block*>(block); }

// Between blocks (while no thread runs a kernel): fill shared memory with a NaN pattern so a
// kernel that reads shared memory it did not write sees garbage, as on a GPU.
void rdiff_emu_block_poison(void* block) {
    Block* b = static_cast<Block*>(block);
    RDIFF_UNPOISON(b->shared.data(), b->shared.size());
    std::memset(b->shared.data(), 0xff, b->shared.size());
    RDIFF_POISON(b->shared.data(), b->shared.size());
}

int rdiff_emu_block_overflowed(void* block) { return static_cast<Block*>(block)->overflow; }

void rdiff_emu_enter(void* block, const unsigned int* grid, const unsigned int* dims,
                     const unsigned int* block_idx, unsigned int tid) {
    tl_block = static_cast<Block*>(block);
    tl_tid = tid;
    tl_shared_cursor = 0;
    tl_shared_arrays = 0;
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {dims[0], dims[1], dims[2]};
    blockIdx = {block_idx[0], block_idx[1], block_idx[2]};
    threadIdx = {tid % dims[0], (tid / dims[0]) % dims[1], tid / (dims[0] * dims[1])};
#if defined(__SANITIZE_THREAD__)
    // ThreadSanitizer does not see the launcher's Rust barriers between blocks (futexes, not
    // pthreads): this one orders the previous block and the poisoning before the kernel.
    tl_block->barrier.wait();
#endif
}

// After a thread's kernel body: the same, ordering the block before the next one's poisoning.
void rdiff_emu_leave() {
#if defined(__SANITIZE_THREAD__)
    tl_block->barrier.wait();
#endif
}

}  // extern "C"

// The kernels, as C++.
#include "error_norm.cu"
#include "lincomb.cu"
#include "threshold.cu"
#include "gemm.cu"
#include "unet_conv.cu"
#include "unet_ops.cu"
#include "unet_attention.cu"
