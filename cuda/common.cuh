// arbor CUDA kernels: common helpers.
//
// This file is textually prepended to every cuda/*.cu source by the host loader before NVRTC
// compiles it (no include path is set; kernel files must not #include it). Nothing here may
// #include a header: NVRTC builds on CI have no CUDA headers (cuda_bf16.h may be absent).
//
// Conventions shared by every kernel file:
//   * Storage type T is `float` ("f32") or `unsigned short` ("bf16": the upper 16 bits of an IEEE
//     binary32, i.e. torch.bfloat16 bit pattern). Kernels are templates over T, instantiated as
//     extern "C" entries NAME_f32 and NAME_bf16. All arithmetic and accumulation is f32.
//   * Gradients, optimizer state, statistics, lse and rstd are always f32.
//   * Tensors are row-major and contiguous unless an argument says otherwise (a row stride).
//   * Sizes and indices are `int`; offsets of rows are computed in `long long`.
//   * Token ids are `const unsigned int*`.
//   * Block sizes are multiples of 32 (one full warp at least), at most 1024.

typedef unsigned short bf16_t;

#define ARBOR_WARP 32
#define ARBOR_FULL_MASK 0xffffffffu

// ---------------------------------------------------------------------------------------------
// bf16 <-> f32
// ---------------------------------------------------------------------------------------------

// Exact widening: the bf16 bits become the high half of the f32.
__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
    return __int_as_float((int)(((unsigned int)h) << 16));
}

// Narrowing with round-to-nearest-even. NaN stays NaN (quiet bit forced so that a NaN whose
// payload lives only in the low 16 bits does not collapse to infinity); +-inf stay inf;
// overflow rounds to inf as IEEE does.
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int u = (unsigned int)__float_as_int(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// ---------------------------------------------------------------------------------------------
// Typed load / store: kernels are written once over the storage type.
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const unsigned short* p) { return bf16_to_f32(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(unsigned short* p, float v) { *p = f32_to_bf16(v); }

// Eight consecutive values at once, p 16-byte aligned: one 16-byte access for bf16, two for f32
// (a warp's accesses then move 512 or 1024 bytes each, where one value at a time moves 64 or 128:
// fewer instructions and more bytes in flight for a memory-bound kernel). The values are
// load_f's and store_f's.
__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15ull) == 0; }
__device__ __forceinline__ void load8_f(const float* p, float* v) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load8_f(const unsigned short* p, float* v) {
    const uint4 w = *reinterpret_cast<const uint4*>(p);
    const unsigned int u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        v[2 * k] = bf16_to_f32((unsigned short)(u[k] & 0xffffu));
        v[2 * k + 1] = bf16_to_f32((unsigned short)(u[k] >> 16));
    }
}
__device__ __forceinline__ void store8_f(float* p, const float* v) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8_f(unsigned short* p, const float* v) {
    unsigned int u[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) u[k] = (unsigned int)f32_to_bf16(v[2 * k]) | ((unsigned int)f32_to_bf16(v[2 * k + 1]) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(u[0], u[1], u[2], u[3]);
}

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float neg_inf_f() { return __int_as_float((int)0xff800000u); }
__device__ __forceinline__ float pos_inf_f() { return __int_as_float(0x7f800000); }

// ---------------------------------------------------------------------------------------------
// Warp / block reductions (all 32 lanes of every participating warp must call them).
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(ARBOR_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(ARBOR_FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(ARBOR_FULL_MASK, v, o);
    return v;
}

// Sum over the whole block; every thread receives the total. `scratch` is __shared__ float[32].
// blockDim.x must be a multiple of 32. Safe to call repeatedly with the same scratch (it
// synchronises before and after touching it).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    return t;
}

// Max over the whole block; every thread receives it. `scratch` is __shared__ float[32].
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : neg_inf_f();
    t = warp_max(t);
    return t;
}

// Block sum in f64 (deterministic order for a fixed block size). `scratch` is __shared__ double[32].
__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = lane < nwarps ? scratch[lane] : 0.0;
    t = warp_sum_d(t);
    return t;
}

// ---------------------------------------------------------------------------------------------
// Atomics
// ---------------------------------------------------------------------------------------------

// Max of non-negative floats through their int bit patterns (monotonic for v >= 0, +0.0).
__device__ __forceinline__ void atomic_max_nonneg(float* addr, float v) {
    atomicMax((int*)addr, __float_as_int(fmaxf(v, 0.0f)));
}

// Online-softmax merge of (max m, sum s) pairs: s is relative to m (s = sum exp(x - m)).
__device__ __forceinline__ void softmax_merge(float& m, float& s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == neg_inf_f()) return;
    s = s * expf(m - mn) + s2 * expf(m2 - mn);
    m = mn;
}

// ---------------------------------------------------------------------------------------------
// Tile loads for the attention kernels
// ---------------------------------------------------------------------------------------------

// dst[r * ld + d] = src[(first + r) * stride + d] (as f32) for r < rows, d < DM, zero where
// first + r >= limit or d >= head_dim. `src` already points at the head's first column. All
// threads of the block cooperate (consecutive threads read consecutive columns: coalesced).
template <typename T, int DM>
__device__ __forceinline__ void load_rows_f32(float* dst, int ld, int rows, const T* src, long long stride,
                                              int first, int limit, int head_dim) {
    for (int idx = threadIdx.x; idx < rows * DM; idx += blockDim.x) {
        const int r = idx / DM, d = idx - (idx / DM) * DM;
        const int row = first + r;
        float x = 0.0f;
        if (row < limit && d < head_dim) x = load_f(src + (long long)row * stride + d);
        dst[r * ld + d] = x;
    }
}

// s[jj] = q_row . K_tile[c + 4 jj] for jj < NJ: one thread's scores against a shared-memory key
// tile (rows of leading dimension ld, DM columns); thread column c takes every fourth key.
template <int DM, int NJ>
__device__ __forceinline__ void tile_scores(float (&s)[NJ], const float* q_row, const float* Ks, int ld, int c) {
#pragma unroll
    for (int jj = 0; jj < NJ; ++jj) s[jj] = 0.0f;
    for (int d = 0; d < DM; ++d) {
        const float qv = q_row[d];
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) s[jj] += qv * Ks[(c + 4 * jj) * ld + d];
    }
}
