// arbor SIMT host emulator: the shim every kernel module is compiled with when it runs on the host
// (scripts/simt_build.py force-includes it and defines ARBOR_SIMT). It maps CUDA's keywords and
// built-ins onto the emulator in runtime.cpp (warp collectives in warp.cpp, wgmma in wgmma.cpp),
// which runs each block's threads as cooperative fibers on one host thread: __syncthreads and the
// warp collectives (shuffles, ldmatrix, mma.sync) block a fiber until every thread they wait for
// has arrived, exactly as the hardware requires; a barrier that can never complete is reported,
// not hung on.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>
#include <utility>

#define __global__
#define __device__ static
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// static shared memory: one copy per process (launches run one at a time), in a section of its
// own so that the runtime can fill it with NaN bytes before each block
#define __shared__ static __attribute__((section("simt_shared")))

namespace simt {

struct Dim3 {
    unsigned int x, y, z;
};

// What a kernel thread sees: its index and the launch's shape.
struct Ctx {
    Dim3 thread, block, block_dim, grid_dim;
};

// Whether a block-wide barrier and every warp collective are legal here is the runtime's business.
void syncthreads(int line);
unsigned char* dynamic_smem();
void cp_async16(void* dst, const void* src, int bytes);
void cp_commit();
void cp_wait_all();
void mma_16816(float* d, const unsigned int* a, const unsigned int* b);
void ldmatrix_x4(unsigned int* r, const unsigned short* row, bool trans);
unsigned long long shfl(const char* what, unsigned int mask, unsigned long long v, int arg, bool xor_lanes);
// __trap(): the launch fails, naming the kernel's own stop
void trap();
// wgmma (sm_90a; cuda/wgmma.cuh WgmmaOps): a warpgroup's asynchronous product and its fences.
// smem_addr is a dynamic shared-memory pointer's address in the shared window (for descriptors);
// wgmma_bf16 is one wgmma.mma_async m64nNk16 with f32 accumulators d (N / 2 per thread), A from
// registers (a_regs, four per thread) or from shared memory (desc_a, a_regs null), B from desc_b.
unsigned int smem_addr(const void* p);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int pending);
void fence_proxy_async();
void wgmma_bf16(float* d, int n, unsigned long long desc_a, const unsigned int* a_regs, unsigned long long desc_b,
                int scale_d, int tnsp_a, int tnsp_b);

// The entry table: every extern "C" kernel of a module registers its name, a caller that unpacks
// cuLaunchKernel's argument pointers, and its parameters' sizes (graph capture copies them).
using Invoke = void (*)(void* fn, void** params);
void register_entry(const char* name, void* fn, Invoke invoke, const unsigned char* sizes, int n);

template <class... A, size_t... I>
void call_with(void* fn, void** p, std::index_sequence<I...>) {
    reinterpret_cast<void (*)(A...)>(fn)(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}

template <class... A>
void invoke(void* fn, void** p) {
    call_with<A...>(fn, p, std::index_sequence_for<A...>{});
}

struct Registrar {
    template <class... A>
    Registrar(const char* name, void (*fn)(A...)) {
        static const unsigned char sizes[sizeof...(A) + 1] = {(unsigned char)sizeof(A)..., 0};
        register_entry(name, reinterpret_cast<void*>(fn), &invoke<A...>, sizes, (int)sizeof...(A));
    }
};

}  // namespace simt

extern simt::Ctx* simt_current;  // the running thread's (runtime.cpp)

#define threadIdx (simt_current->thread)
#define blockIdx (simt_current->block)
#define blockDim (simt_current->block_dim)
#define gridDim (simt_current->grid_dim)
#define __syncthreads() simt::syncthreads(__LINE__)

// CUDA's vector types (the ones the kernels use), with the hardware's alignment.
struct __attribute__((aligned(16))) uint4 {
    unsigned int x, y, z, w;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned int x, y;
};
static inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }

template <class T>
static inline T simt_from_bits(unsigned long long b) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

template <class T>
static inline unsigned long long simt_to_bits(T v) {
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}

template <class T>
static inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
    (void)width;
    return simt_from_bits<T>(simt::shfl("__shfl_xor_sync", mask, simt_to_bits(v), lane_mask, true));
}

template <class T>
static inline T __shfl_sync(unsigned int mask, T v, int src_lane, int width = 32) {
    (void)width;
    return simt_from_bits<T>(simt::shfl("__shfl_sync", mask, simt_to_bits(v), src_lane, false));
}

static inline void __trap() { simt::trap(); }
static inline float __int_as_float(int i) { return simt_from_bits<float>((unsigned int)i); }
static inline int __float_as_int(float f) { return (int)(unsigned int)simt_to_bits(f); }
static inline unsigned int __float_as_uint(float f) { return (unsigned int)simt_to_bits(f); }
static inline float __uint_as_float(unsigned int u) { return simt_from_bits<float>(u); }
// The _rn intrinsics round each operation on its own: never fused into a multiply-add, even when
// the kernels are compiled with contraction on (as NVRTC compiles them). The empty asm makes the
// result a value the compiler cannot see through.
#if defined(__x86_64__)
#define SIMT_ROUNDED(r) asm("" : "+x"(r))
#else
#define SIMT_ROUNDED(r) asm("" : "+w"(r))
#endif
static inline float __fmul_rn(float a, float b) {
    float r = a * b;
    SIMT_ROUNDED(r);
    return r;
}
static inline float __fadd_rn(float a, float b) {
    float r = a + b;
    SIMT_ROUNDED(r);
    return r;
}
static inline float __fsub_rn(float a, float b) {
    float r = a - b;
    SIMT_ROUNDED(r);
    return r;
}
// a fused multiply-add: one rounding
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fdiv_rn(float a, float b) {
    float r = a / b;
    SIMT_ROUNDED(r);
    return r;
}

// The threads of a block run one at a time and switch only at barriers and collectives, so a
// read-modify-write is atomic as written.
static inline int atomicMax(int* p, int v) {
    const int old = *p;
    if (v > old) *p = v;
    return old;
}
static inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
    const unsigned long long old = *p;
    if (v > old) *p = v;
    return old;
}
static inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}

template <class A, class B>
static inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a < (C)b ? (C)a : (C)b;
}
template <class A, class B>
static inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a > (C)b ? (C)a : (C)b;
}
