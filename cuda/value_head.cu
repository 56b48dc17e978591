// A value model's head V = lnf · w + b on the device, and its backward (CPU: src/train/critic.rs
// through train::engine's trunk_values / accumulate_trunk_head), so that only the N values and
// the head's C + 1 gradients cross to the host, never the [N, C] hidden states.
//
// ABI (f32, row-major, contiguous; common.cuh is prepended by the loader):
//
// value_head_fwd_f32 (float* v, const float* lnf, const float* w, int n, int c)
//   lnf: [N, C], w: [C], v: [N].  v[i] = sum_k lnf[i, k] * w[k]  (the bias is added on the host)
//   Each thread sums its strided share of the row, then the block sums in a fixed order.
//   Launch: grid = (n), block = 256, no dynamic shared memory.
//
// value_head_dx_f32 (float* dlnf, const float* dv, const float* w, int n, int c)
//   dv: [N] = dL/dV per row (0 where no loss), dlnf: [N, C] (overwritten).
//   dlnf[i, k] = dv[i] * w[k]
//   Launch: grid = (n), block = 256, no dynamic shared memory.
//
// value_head_dw_part_f32 (float* part, const float* lnf, const float* dv, int n, int c, int rows)
//   part: [P, C] (overwritten), P = ceil(n / rows) row chunks.
//   part[p, k] = sum over i in chunk p (rows p*rows .. min(n, (p+1)*rows), in order) of dv[i] * lnf[i, k]
//   Launch: grid = (ceil(c / 256), P), block = 256, no dynamic shared memory.
//
// value_head_dw_sum_f32 (float* dw, const float* part, int p, int c)
//   dw: [C] (overwritten).  dw[k] = sum_q part[q, k], q = 0 .. p-1 in order: with the chunks, a
//   fixed order of additions (deterministic, no atomics), and every SM busy.
//   Launch: grid = (ceil(c / 256)), block = 256, no dynamic shared memory.

extern "C" __global__ void value_head_fwd_f32(float* __restrict__ v, const float* __restrict__ lnf,
                                              const float* __restrict__ w, int n, int c) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= n) return;
    const float* h = lnf + (long long)row * c;
    float s = 0.0f;
    for (int k = threadIdx.x; k < c; k += blockDim.x) s += h[k] * w[k];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) v[row] = s;
}

extern "C" __global__ void value_head_dx_f32(float* __restrict__ dlnf, const float* __restrict__ dv,
                                             const float* __restrict__ w, int n, int c) {
    const int row = blockIdx.x;
    if (row >= n) return;
    const float d = dv[row];
    float* out = dlnf + (long long)row * c;
    for (int k = threadIdx.x; k < c; k += blockDim.x) out[k] = d * w[k];
}

extern "C" __global__ void value_head_dw_part_f32(float* __restrict__ part, const float* __restrict__ lnf,
                                                  const float* __restrict__ dv, int n, int c, int rows) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= c) return;
    const long long p = blockIdx.y;
    const long long end = min((long long)n, (p + 1) * rows);
    float s = 0.0f;
    for (long long i = p * rows; i < end; i++) s += dv[i] * lnf[i * c + k];
    part[(long long)p * c + k] = s;
}

extern "C" __global__ void value_head_dw_sum_f32(float* __restrict__ dw, const float* __restrict__ part, int p,
                                                 int c) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= c) return;
    float s = 0.0f;
    for (int q = 0; q < p; q++) s += part[(long long)q * c + k];
    dw[k] = s;
}
