// Kernels of the SIMT emulator's self-test (simt/selftest.cpp): each exercises one thing the
// emulator must get right or must refuse. Built like cuda/*.cu (scripts/simt_build.py), never
// compiled by NVRTC.

// ldmatrix (plain and .trans) and mma.sync m16n8k16: D (16 x 8) = A (16 x 16) B (16 x 8), A row
// major, B given as its transpose Bt (8 x 16, row major: n x k), and again with B row major (16 x
// 8: k x n) loaded transposed; one warp.
extern "C" __global__ void st_mma(float* d1, float* d2, const unsigned short* a, const unsigned short* bt,
                                  const unsigned short* b) {
    extern __shared__ __align__(16) unsigned short st_smem[];
    unsigned short* As = st_smem;          // 16 x 16
    unsigned short* Bts = st_smem + 256;   // 8 x 16
    unsigned short* Bs = st_smem + 384;    // 16 x 8
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) As[i] = a[i];
    for (int i = lane; i < 128; i += 32) Bts[i] = bt[i], Bs[i] = b[i];
    __syncthreads();
    unsigned int af[4], bf[4];
    const int i = lane >> 3;
    // A: matrices (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
    simt::ldmatrix_x4(af, As + ((lane & 7) + (i & 1) * 8) * 16 + (i >> 1) * 8, false);
    // B from Bt: matrices (n 0-7, k 0-7), (n 0-7, k 8-15); registers 2, 3 repeat them
    simt::ldmatrix_x4(bf, Bts + (lane & 7) * 16 + (i & 1) * 8, false);
    float acc[4] = {0, 0, 0, 0};
    simt::mma_16816(acc, af, bf);
    const int gr = lane >> 2, tg = lane & 3;
    d1[gr * 8 + 2 * tg] = acc[0];
    d1[gr * 8 + 2 * tg + 1] = acc[1];
    d1[(gr + 8) * 8 + 2 * tg] = acc[2];
    d1[(gr + 8) * 8 + 2 * tg + 1] = acc[3];
    // B row major, transposed as it loads: matrices (k 0-7), (k 8-15)
    simt::ldmatrix_x4(bf, Bs + ((lane & 7) + (i & 1) * 8) * 8, true);
    float acc2[4] = {0, 0, 0, 0};
    simt::mma_16816(acc2, af, bf);
    d2[gr * 8 + 2 * tg] = acc2[0];
    d2[gr * 8 + 2 * tg + 1] = acc2[1];
    d2[(gr + 8) * 8 + 2 * tg] = acc2[2];
    d2[(gr + 8) * 8 + 2 * tg + 1] = acc2[3];
}

// A block sum through shuffles and a barrier, written to out[blockIdx.x].
extern "C" __global__ void st_block_sum(float* out, const float* x) {
    __shared__ float part[32];
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.0f;
        for (unsigned int w = 0; w < blockDim.x / 32; ++w) t += part[w];
        out[blockIdx.x] = t;
    }
}

// Two halves of the block at barriers on different lines: undefined on a GPU.
extern "C" __global__ void st_divergent_barrier(float* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// Thread 0 waits at a barrier that the others never reach (they wait in a shuffle): a GPU hangs.
extern "C" __global__ void st_hang(float* out) {
    if (threadIdx.x == 0) {
        __syncthreads();
    } else {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    }
}

// Lanes that returned before a full-warp shuffle: undefined on a GPU.
extern "C" __global__ void st_exited_lanes(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// out[i] = x[i] + 1 for i < n, every thread one element (n may exceed the buffer: the fault test).
extern "C" __global__ void st_add_one(float* out, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] + 1.0f;
}

// cp.async lands at the wait for its committed group, not at the issue nor at a wait before the
// commit: reads before see the old value.
extern "C" __global__ void st_cp_async(float* out, const unsigned short* src) {
    extern __shared__ __align__(16) unsigned short st_smem[];
    st_smem[threadIdx.x * 8] = 7;
    simt::cp_async16(st_smem + threadIdx.x * 8, src + threadIdx.x * 8, 16);
    simt::cp_wait_all();  // not committed: not waited for
    out[threadIdx.x * 3] = (float)st_smem[threadIdx.x * 8];
    simt::cp_commit();
    out[threadIdx.x * 3 + 1] = (float)st_smem[threadIdx.x * 8];
    simt::cp_wait_all();
    out[threadIdx.x * 3 + 2] = (float)st_smem[threadIdx.x * 8];
}

// Every thread writes one shared word with no barrier between the writes (a race), then thread 0
// reports the survivor after a barrier: the last thread to run, which ARBOR_SIMT_ORDER chooses.
extern "C" __global__ void st_last_writer(float* out) {
    __shared__ int who;
    who = (int)threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = (float)who;
}

// Reads a static shared word before any thread writes it: garbage on a GPU, NaN bytes here, in
// every block (not the zero of a C++ static, nor what the previous block left).
extern "C" __global__ void st_static_smem(float* out) {
    __shared__ float s;
    if (threadIdx.x == 0) {
        out[blockIdx.x] = s;
        s = 42.0f;
    }
}

// out[0] = a * b + c rounded twice (the _rn intrinsics), out[1] as the compiler likes (fused where
// the host has FMA, as NVRTC fuses by default).
extern "C" __global__ void st_rounding(float* out, float a, float b, float c, float d) {
    if (threadIdx.x == 0) {
        out[0] = __fadd_rn(__fmul_rn(a, b), c);
        out[1] = a * d + c;  // d = b: another product, so that the compiler cannot share the first
    }
}

// wgmma (sm_90a) on one warpgroup, 64 x 64 accumulators: d = A Bᵀ with A (64 x 16, m x k) and B (64
// x 16, n x k) from shared memory, both K-major, B copied in with cp.async; then, in the same
// commit group, d += A2 B2 with A2 from registers and B2 (16 x 64, k x n) MN-major (transposed).
// The unswizzled core-matrix layouts: a K-major 64 x 16 operand's (r, k) at ((r / 8) 2 + k / 8) 64
// + (r % 8) 8 + k % 8 elements (LBO 128 bytes, SBO 256); the MN-major one's (k, n) at ((k / 8) 8 +
// n / 8) 64 + (k % 8) 8 + n % 8 (LBO 1024, SBO 128). out = d (64 x 64, row major); early[t] = 1
// where thread t read its first accumulator as NaN between the issue and the wait. mode 1 leaves
// out the proxy fence after the copies, 2 the wgmma.fence, 3 the wait, 5 the copies' wait; mode 4
// overwrites an operand between the issue and the wait, 6 an accumulator, and 8 issues a second
// product into accumulators that partly overlap the first's; mode 7 commits an empty group after
// the products' and waits with one group pending (an empty group counts: the products land).
extern "C" __global__ void st_wgmma(float* out, float* early, const unsigned short* a, const unsigned short* b,
                                    const unsigned short* a2, const unsigned short* b2, int mode) {
    extern __shared__ __align__(16) unsigned short st_smem[];
    unsigned short* As = st_smem;
    unsigned short* Bs = st_smem + 1024;
    unsigned short* B2s = st_smem + 2048;
    const int t = threadIdx.x;
    for (int i = t; i < 1024; i += 128) {
        const int r = i / 16, k = i % 16;
        As[((r / 8) * 2 + k / 8) * 64 + (r % 8) * 8 + k % 8] = a[i];
        const int kk = i / 64, n = i % 64;
        B2s[((kk / 8) * 8 + n / 8) * 64 + (kk % 8) * 8 + n % 8] = b2[i];
    }
    {
        const int n = t / 2, c = t % 2;  // B's row n, elements 8c .. 8c + 7
        simt::cp_async16(Bs + ((n / 8) * 2 + c) * 64 + (n % 8) * 8, b + n * 16 + 8 * c, 16);
        simt::cp_commit();
        if (mode != 5) simt::cp_wait_all();
    }
    if (mode != 1) simt::fence_proxy_async();
    __syncthreads();
    const int w = t / 32, gr = (t % 32) / 4, tg = t % 4;
    unsigned int ar[4];
    for (int q = 0; q < 4; ++q) {
        const int row = 16 * w + gr + ((q & 1) ? 8 : 0), col = 2 * tg + ((q & 2) ? 8 : 0);
        ar[q] = (unsigned int)a2[row * 16 + col] | ((unsigned int)a2[row * 16 + col + 1] << 16);
    }
    auto desc = [](const void* p, unsigned lbo, unsigned sbo) {
        return (unsigned long long)((simt::smem_addr(p) & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
               ((unsigned long long)(sbo >> 4) << 32);
    };
    float d[40];  // (32 accumulators; mode 8 issues into d + 8)
    for (int i = 0; i < 40; ++i) d[i] = 5.0f;  // scale-d 0: ignored
    if (mode != 2) simt::wgmma_fence();
    simt::wgmma_bf16(d, 64, desc(As, 128, 256), nullptr, desc(Bs, 128, 256), 0, 0, 0);
    simt::wgmma_bf16(d, 64, 0, ar, desc(B2s, 1024, 128), 1, 0, 1);
    early[t] = d[0] != d[0] ? 1.0f : 0.0f;
    if (mode == 4 && t == 0) Bs[0] ^= 1;
    if (mode == 6 && t == 5) d[3] = 1.0f;
    if (mode == 8) simt::wgmma_bf16(d + 8, 64, desc(As, 128, 256), nullptr, desc(Bs, 128, 256), 0, 0, 0);
    simt::wgmma_commit();
    if (mode == 3) return;
    if (mode == 7) simt::wgmma_commit();
    simt::wgmma_wait(mode == 7 ? 1 : 0);
    for (int j = 0; j < 8; ++j) {
        for (int e = 0; e < 4; ++e) {
            const int row = 16 * w + gr + (e >= 2 ? 8 : 0), col = 8 * j + 2 * tg + (e & 1);
            out[row * 64 + col] = d[4 * j + e];
        }
    }
}
