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
//   (float* dtable, const float* dout, const unsigned int* ids, int n, int c)
//   dtable: [V, C] f32 (ADDED into, like the CPU), dout: [N, C] f32.
//   dtable[ids[i], :] += dout[i, :] with atomicAdd (rows may repeat a token id).
//   Launch: grid = (n), block = 256, no dynamic shared memory.
//   Deviation: the order in which repeated ids are summed is not fixed (float atomics), so the
//   result may differ from the CPU's serial order in the last bits when an id repeats.

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
                                             const unsigned int* __restrict__ ids, int n, int c) {
    const int row = blockIdx.x;
    if (row >= n) return;
    const long long dst = (long long)ids[row] * c;
    const long long src = (long long)row * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) atomicAdd(dtable + dst + j, dout[src + j]);
}
