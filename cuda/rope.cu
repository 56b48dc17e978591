// Rotary position embedding, in place (CPU: src/tensor/cpu/ops.rs rope_apply / RopeTable).
//
// ABI:
// rope_f32 / rope_bf16
//   (T* x, int n, int row_stride, int n_rot_heads, int head_dim, const unsigned int* positions,
//    const float* cos_table, const float* sin_table, int inverse)
//   x: [N, row_stride] T, rotated in place; the first n_rot_heads heads of each row (columns
//      [0, n_rot_heads * head_dim)) are rotated, the rest of the row is untouched. For a packed
//      q|k|v row ([H + 2KV] heads of D) pass n_rot_heads = H + KV: q and k in one launch.
//   positions: [N] position of each row (must be < max_pos).
//   cos_table, sin_table: [max_pos, head_dim / 2] f32 each: the CPU RopeTable.cos / .sin uploaded
//      as is (cos[p * half + i] = cos(p * theta^(-2i/D)) computed on the host).
//   HF "rotate_half" convention: pairs (i, i + D/2) of each head, half = D/2, for i < half:
//      a = x[i], b = x[i + half], c = cos[p, i], s = sin[p, i] (s = -sin[p, i] when inverse != 0)
//      x[i] = a*c - b*s;  x[i + half] = b*c + a*s
//   inverse != 0 applies the transpose rotation = the backward pass (run on the f32 gradient
//   dqkv, i.e. rope_f32, exactly as the CPU backward does).
//   Launch: grid = (n), block = 128 (any multiple of 32), no dynamic shared memory. Each thread
//   handles pairs (head, i) strided over n_rot_heads * half.

template <typename T>
__device__ void rope(T* __restrict__ x, int n, int row_stride, int n_rot_heads, int head_dim,
                     const unsigned int* __restrict__ positions, const float* __restrict__ cos_table,
                     const float* __restrict__ sin_table, int inverse) {
    const int row = blockIdx.x;
    if (row >= n) return;
    const int half = head_dim / 2;
    const long long p = positions[row];
    const float* cs = cos_table + p * half;
    const float* sn = sin_table + p * half;
    T* xr = x + (long long)row * row_stride;
    const int pairs = n_rot_heads * half;
    for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
        const int h = idx / half;
        const int i = idx - h * half;
        T* lo = xr + h * head_dim + i;
        T* hi = lo + half;
        const float a = load_f(lo), b = load_f(hi);
        const float c = cs[i];
        const float s = inverse ? -sn[i] : sn[i];
        store_f(lo, a * c - b * s);
        store_f(hi, b * c + a * s);
    }
}

extern "C" __global__ void rope_f32(float* x, int n, int row_stride, int n_rot_heads, int head_dim,
                                    const unsigned int* positions, const float* cos_table,
                                    const float* sin_table, int inverse) {
    rope<float>(x, n, row_stride, n_rot_heads, head_dim, positions, cos_table, sin_table, inverse);
}

extern "C" __global__ void rope_bf16(unsigned short* x, int n, int row_stride, int n_rot_heads, int head_dim,
                                     const unsigned int* positions, const float* cos_table,
                                     const float* sin_table, int inverse) {
    rope<unsigned short>(x, n, row_stride, n_rot_heads, head_dim, positions, cos_table, sin_table, inverse);
}
