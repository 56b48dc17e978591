// Small row-wise helpers of the model (CPU: src/tensor/cpu/ops.rs add_bias / bias_backward).
//
// ABI (f32_to_bf16_n: at the end of the file):
// add_bias_f32
//   (float* out, const float* bias, int n, int c)
//   out: [N, C] f32, bias: [C] f32.  out[i, j] += bias[j].
//   Launch: grid = (n, ceil(c / 256)), block = 256, no dynamic shared memory (rows on x: y would
//   stop at 65,535 tokens).
//
// col_partial_f32
//   (float* partial, const float* x, int n, int c, int rows_per_chunk)
//   partial: [P, C] f32 with P = ceil(n / rows_per_chunk) (overwritten);
//   partial[p, j] = sum of x[i, j] over rows i in [p * rows_per_chunk, min(n, (p + 1) * rows_per_chunk)),
//   summed in row order (deterministic). Fold with colsum_add_f32 (rmsnorm.cu) into a bias gradient.
//   Launch: grid = (ceil(c / 256), P), block = 256, no dynamic shared memory.

extern "C" __global__ void add_bias_f32(float* __restrict__ out, const float* __restrict__ bias, int n, int c) {
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    const int i = blockIdx.x;
    if (j >= c || i >= n) return;
    out[(long long)i * c + j] += bias[j];
}

extern "C" __global__ void col_partial_f32(float* __restrict__ partial, const float* __restrict__ x, int n, int c,
                                           int rows_per_chunk) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int p = blockIdx.y;
    if (j >= c) return;
    const int r0 = p * rows_per_chunk;
    const int r1 = min(n, r0 + rows_per_chunk);
    float s = 0.0f;
    for (int i = r0; i < r1; ++i) s += x[(long long)i * c + j];
    partial[(long long)p * c + j] = s;
}

// f32_to_bf16_n
//   (unsigned short* out, const float* x, long long n)
//   out[i] = bf16(x[i]) for i < n, round to nearest even (f32_to_bf16 of common.cuh): the operands of
//   a "bf16" matrix product (src/cuda/gemm.rs).
//   Launch: grid = (any, 1), block = 256 (grid-stride), no dynamic shared memory.
extern "C" __global__ void f32_to_bf16_n(unsigned short* __restrict__ out, const float* __restrict__ x, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = f32_to_bf16(x[i]);
}
