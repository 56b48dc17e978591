// Token embedding gather and its backward (CPU: src/tensor/cpu/ops.rs embedding_forward/backward).
//
// ABI (all tensors row-major, contiguous; common.cuh is prepended by the loader):
//
// embedding_fwd_f32 / embedding_fwd_bf16
//   (T* out, const T* table, const unsigned int* ids, int n, int c)
//   table: [V, C] storage T, ids: [N], out: [N, C] storage T.
//   out[i, :] = table[ids[i], :]   (a copy; bf16 -> bf16 is bit exact)
//   Launch: grid = (n), block = 256 (any multiple of 32 works), no dynamic shared memory.
//   Ids must be < V (the host validates the batch; the kernel does not check).
//
// embedding_bwd_f32
//   (float* dtable, const float* dout, const unsigned int* csr, int u, int n, int c)
//   dtable: [V, C] f32 (ADDED into, like the CPU), dout: [N, C] f32.
//   dtable[ids[i], :] += dout[i, :] for every row i, deterministically and in the CPU's order:
//   csr = [ids (u distinct token ids) | starts (u + 1) | rows (N)], built by the host
//   (`cuda::backend::embedding_csr`): distinct id k's rows, ascending, are
//   rows[starts[k] .. starts[k + 1]]. Block k owns id k's row of dtable, so no two blocks write
//   the same element and no atomics are needed; each element is summed serially in row order,
//   exactly the CPU's ((d + dout[i1]) + dout[i2]) + ... (bit-identical). Rows >= n are skipped.
//   Launch: grid = (u), block = 256, no dynamic shared memory.

template <typename T>
__device__ void embedding_fwd(T* __restrict__ out, const T* __restrict__ table,
                              const unsigned int* __restrict__ ids, int n, int c) {
    const int row = blockIdx.x;
    if (row >= n) return;
    const long long src = (long long)ids[row] * c;
    const long long dst = (long long)row * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) out[dst + j] = table[src + j];
}

extern "C" __global__ void embedding_fwd_f32(float* out, const float* table, const unsigned int* ids, int n,
                                             int c) {
    embedding_fwd<float>(out, table, ids, n, c);
}

extern "C" __global__ void embedding_fwd_bf16(unsigned short* out, const unsigned short* table,
                                              const unsigned int* ids, int n, int c) {
    embedding_fwd<unsigned short>(out, table, ids, n, c);
}

extern "C" __global__ void embedding_bwd_f32(float* __restrict__ dtable, const float* __restrict__ dout,
                                             const unsigned int* __restrict__ csr, int u, int n, int c) {
    const int k = blockIdx.x;
    if (k >= u) return;
    const unsigned int* starts = csr + u;
    const unsigned int* rows = csr + 2 * u + 1;
    const long long dst = (long long)csr[k] * c;
    const unsigned int a = starts[k], b = starts[k + 1];
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float acc = dtable[dst + j];
        for (unsigned int r = a; r < b; ++r) {
            const unsigned int row = rows[r];
            if ((int)row < n) acc += dout[(long long)row * c + j];
        }
        dtable[dst + j] = acc;
    }
}
