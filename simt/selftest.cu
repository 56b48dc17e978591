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
