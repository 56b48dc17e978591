// RMSNorm forward and backward (CPU: src/tensor/cpu/ops.rs rmsnorm_forward / rmsnorm_backward).
//
// ABI (row-major, contiguous; N rows of C channels; T = float for _f32, unsigned short (bf16) for
// _bf16; gradients and statistics are f32 in both):
//
// rmsnorm_fwd_f32 / rmsnorm_fwd_bf16
//   (T* y, float* rstd, const T* x, const T* w, int n, int c, float eps)
//   x, y: [N, C] T; w: [C] T; rstd: [N] f32.
//   rstd[i] = 1 / sqrt(mean_j(x[i,j]^2) + eps)   (eps inside the square root, like the CPU)
//   y[i,j]  = x[i,j] * rstd[i] * w[j]
//   Launch: grid = (n), block = 256 (multiple of 32, <= 1024), no dynamic shared memory.
// rmsnorm_fwd_f32_o16: rmsnorm_fwd_f32 with y in bf16 (unsigned short, rounded to nearest even as
//   it is written: the rows a bf16 product reads, without a rounding pass).
//
// rmsnorm_bwd_f32 / rmsnorm_bwd_bf16            (input gradient, ADDED into dx like the CPU)
//   (float* dx, const float* dy, const T* x, const T* w, const float* rstd, int n, int c)
//   dx, dy: [N, C] f32; x: [N, C] T; w: [C] T; rstd: [N] f32 (from the forward).
//   dot = sum_j dy[i,j] * w[j] * x[i,j];  k = rstd^3 * dot / C
//   dx[i,j] += rstd * dy[i,j] * w[j] - k * x[i,j]
//   Launch: grid = (n), block = 256, no dynamic shared memory.
//
// Weight gradient: deterministic two-pass partial sums (no atomics).
// rmsnorm_dw_partial_f32 / rmsnorm_dw_partial_bf16
//   (float* partial, const float* dy, const T* x, const float* rstd, int n, int c, int rows_per_chunk)
//   partial: [P, C] f32 with P = ceil(n / rows_per_chunk) (overwritten).
//   partial[p, j] = sum over rows i in [p*rows_per_chunk, min(n, (p+1)*rows_per_chunk)) of
//                   dy[i,j] * x[i,j] * rstd[i]            (rows summed in a fixed order)
//   Launch: grid = (ceil(c / 32), P), block = (32, 8) (blockDim.x MUST be 32, blockDim.y MUST
//   be 8), no dynamic shared memory. Suggested rows_per_chunk: 256 (or n / (2 * #SMs) rounded up).
// colsum_add_f32
//   (float* dst, const float* partial, int p, int c)
//   dst[j] += sum_{q < p} partial[q, j], summed in order q = 0, 1, ... (dst = dw, ADDED into).
//   Launch: grid = (ceil(c / 256)), block = 256.
//   (Also usable for any column sum, e.g. a bias gradient from per-chunk partials.)

template <typename T, typename TY = T>
__device__ void rmsnorm_fwd(TY* __restrict__ y, float* __restrict__ rstd, const T* __restrict__ x,
                            const T* __restrict__ w, int n, int c, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= n) return;
    const long long off = (long long)row * c;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float v = load_f(x + off + j);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float s = 1.0f / sqrtf(ss / (float)c + eps);
    if (threadIdx.x == 0) rstd[row] = s;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        store_f(y + off + j, load_f(x + off + j) * s * load_f(w + j));
    }
}

extern "C" __global__ void rmsnorm_fwd_f32(float* y, float* rstd, const float* x, const float* w, int n, int c,
                                           float eps) {
    rmsnorm_fwd<float>(y, rstd, x, w, n, c, eps);
}

extern "C" __global__ void rmsnorm_fwd_bf16(unsigned short* y, float* rstd, const unsigned short* x,
                                            const unsigned short* w, int n, int c, float eps) {
    rmsnorm_fwd<unsigned short>(y, rstd, x, w, n, c, eps);
}

extern "C" __global__ void rmsnorm_fwd_f32_o16(unsigned short* y, float* rstd, const float* x, const float* w, int n,
                                               int c, float eps) {
    rmsnorm_fwd<float, unsigned short>(y, rstd, x, w, n, c, eps);
}

template <typename T>
__device__ void rmsnorm_bwd(float* __restrict__ dx, const float* __restrict__ dy, const T* __restrict__ x,
                            const T* __restrict__ w, const float* __restrict__ rstd, int n, int c) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= n) return;
    const long long off = (long long)row * c;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        dot += dy[off + j] * load_f(w + j) * load_f(x + off + j);
    }
    dot = block_sum(dot, scratch);
    const float s = rstd[row];
    const float k = s * s * s * dot / (float)c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        dx[off + j] += s * dy[off + j] * load_f(w + j) - k * load_f(x + off + j);
    }
}

extern "C" __global__ void rmsnorm_bwd_f32(float* dx, const float* dy, const float* x, const float* w,
                                           const float* rstd, int n, int c) {
    rmsnorm_bwd<float>(dx, dy, x, w, rstd, n, c);
}

extern "C" __global__ void rmsnorm_bwd_bf16(float* dx, const float* dy, const unsigned short* x,
                                            const unsigned short* w, const float* rstd, int n, int c) {
    rmsnorm_bwd<unsigned short>(dx, dy, x, w, rstd, n, c);
}

// Of a (32, 8) block whose threads (x, y) each summed a slice of column j's rows into `a`: the 8
// slices' sums added in order y = 0..7 into partial[blockIdx.y, j] (of `cols` columns).
__device__ __forceinline__ void fold8_store(float (*acc)[33], float a, float* __restrict__ partial, int j,
                                            int cols) {
    acc[threadIdx.y][threadIdx.x] = a;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
        float t = 0.0f;
#pragma unroll
        for (int q = 0; q < 8; ++q) t += acc[q][threadIdx.x];
        partial[(long long)blockIdx.y * cols + j] = t;
    }
}

// blockDim = (32, 8): threadIdx.x picks the column, the 8 rows of threads stride over the chunk's
// rows; the 8 per-thread sums are combined in a fixed order through shared memory.
template <typename T>
__device__ void rmsnorm_dw_partial(float* __restrict__ partial, const float* __restrict__ dy,
                                   const T* __restrict__ x, const float* __restrict__ rstd, int n, int c,
                                   int rows_per_chunk) {
    __shared__ float acc[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * rows_per_chunk;
    int r1 = r0 + rows_per_chunk;
    if (r1 > n) r1 = n;
    float a = 0.0f;
    if (j < c) {
        for (int i = r0 + (int)threadIdx.y; i < r1; i += 8) {
            const long long off = (long long)i * c + j;
            a += dy[off] * load_f(x + off) * rstd[i];
        }
    }
    fold8_store(acc, a, partial, j, c);
}

extern "C" __global__ void rmsnorm_dw_partial_f32(float* partial, const float* dy, const float* x,
                                                  const float* rstd, int n, int c, int rows_per_chunk) {
    rmsnorm_dw_partial<float>(partial, dy, x, rstd, n, c, rows_per_chunk);
}

extern "C" __global__ void rmsnorm_dw_partial_bf16(float* partial, const float* dy, const unsigned short* x,
                                                   const float* rstd, int n, int c, int rows_per_chunk) {
    rmsnorm_dw_partial<unsigned short>(partial, dy, x, rstd, n, c, rows_per_chunk);
}

extern "C" __global__ void colsum_add_f32(float* __restrict__ dst, const float* __restrict__ partial, int p,
                                          int c) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float t = 0.0f;
    for (int q = 0; q < p; ++q) t += partial[(long long)q * c + j];
    dst[j] += t;
}

// Per-head RMSNorm in place (Qwen3's q_norm / k_norm; CPU: src/tensor/cpu/head_norm.rs).
//
// The heads: rows i < n of `row_stride` floats, the pointer at the first head to norm; head h of
// row i is x[i*row_stride + h*d .. + d]. A (row, head) pair r = i*heads + h is one "head row".
//
// head_norm_fwd_f32
//   (float* x, float* raw, float* rstd, const float* w, int n, int row_stride, int heads, int d,
//    float eps)
//   rstd[r] = 1 / sqrt(mean_j(x_h[j]^2) + eps); x_h[j] = x_h[j] * rstd[r] * w[j];
//   raw[r*d + j] = the input x_h[j] (raw and rstd may be null: nothing kept, as in a decode step).
//   Launch: grid = (n * heads), block = 32 (one warp per head row), no dynamic shared memory.
//
// head_norm_bwd_f32                              (input gradient, OVERWRITES the output gradient)
//   (float* dx, const float* raw, const float* w, const float* rstd, int n, int row_stride,
//    int heads, int d)
//   dx strided as x, holding dy: dot = sum_j dy[j] * w[j] * raw[j];  k = rstd^3 * dot / d;
//   dx[j] = rstd * dy[j] * w[j] - k * raw[j].
//   Launch: grid = (n * heads), block = 32.
//
// head_norm_dw_partial_f32                       (run before head_norm_bwd_f32: it reads dy)
//   (float* partial, const float* dy, const float* raw, const float* rstd, int n, int row_stride,
//    int heads, int d, int rows_per_chunk)
//   partial: [P, d] with P = ceil(n * heads / rows_per_chunk) (overwritten);
//   partial[p, j] = sum over head rows r of chunk p of dy_r[j] * raw[r*d + j] * rstd[r], in a
//   fixed order; then colsum_add_f32 adds the P rows into dw.
//   Launch: grid = (ceil(d / 32), P), block = (32, 8) (as rmsnorm_dw_partial).

extern "C" __global__ void head_norm_fwd_f32(float* __restrict__ x, float* __restrict__ raw,
                                             float* __restrict__ rstd, const float* __restrict__ w, int n,
                                             int row_stride, int heads, int d, float eps) {
    const long long r = blockIdx.x;
    if (r >= (long long)n * heads) return;
    float* xh = x + (r / heads) * row_stride + (r % heads) * d;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += 32) {
        const float v = xh[j];
        ss += v * v;
    }
    ss = warp_sum(ss);
    const float s = 1.0f / sqrtf(ss / (float)d + eps);
    if (threadIdx.x == 0 && rstd != nullptr) rstd[r] = s;
    for (int j = threadIdx.x; j < d; j += 32) {
        const float v = xh[j];
        if (raw != nullptr) raw[r * d + j] = v;
        xh[j] = v * s * w[j];
    }
}

extern "C" __global__ void head_norm_bwd_f32(float* __restrict__ dx, const float* __restrict__ raw,
                                             const float* __restrict__ w, const float* __restrict__ rstd, int n,
                                             int row_stride, int heads, int d) {
    const long long r = blockIdx.x;
    if (r >= (long long)n * heads) return;
    float* g = dx + (r / heads) * row_stride + (r % heads) * d;
    const float* xh = raw + r * d;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += 32) dot += g[j] * w[j] * xh[j];
    dot = warp_sum(dot);
    const float s = rstd[r];
    const float k = s * s * s * dot / (float)d;
    for (int j = threadIdx.x; j < d; j += 32) g[j] = s * g[j] * w[j] - k * xh[j];
}

extern "C" __global__ void head_norm_dw_partial_f32(float* __restrict__ partial, const float* __restrict__ dy,
                                                    const float* __restrict__ raw, const float* __restrict__ rstd,
                                                    int n, int row_stride, int heads, int d, int rows_per_chunk) {
    __shared__ float acc[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    const long long total = (long long)n * heads;
    const long long r0 = (long long)blockIdx.y * rows_per_chunk;
    long long r1 = r0 + rows_per_chunk;
    if (r1 > total) r1 = total;
    float a = 0.0f;
    if (j < d) {
        for (long long r = r0 + threadIdx.y; r < r1; r += 8) {
            a += dy[(r / heads) * row_stride + (r % heads) * d + j] * raw[r * d + j] * rstd[r];
        }
    }
    fold8_store(acc, a, partial, j, d);
}
