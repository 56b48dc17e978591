// Sum of squares for the global gradient norm, deterministic (CPU: src/train/adamw.rs grad_norm,
// which sums chunks in f64).
//
// ABI:
// sumsq_partial_f32
//   (const float* x, long long n, double* partials)
//   partials: [gridDim.x] f64 (overwritten). Thread t of block b visits i = b*256 + t + k*stride
//   (grid-stride loop, stride = gridDim.x * 256), squares x[i] in f32 and accumulates in f64;
//   the block's 256 sums are reduced in a fixed tree order: partials[b] = that block's sum.
//   Launch: grid = (P) with P <= 1024 (suggested P = min(1024, ceil(n / 256))), block = 256 (MUST
//   be 256), no dynamic shared memory. For a fixed P the result is bit-reproducible.
// sumsq_final_f64
//   (const double* partials, int p, float* out_norm, double* out_sumsq)
//   out_sumsq[0] = sum of partials[0..p) (fixed order); out_norm[0] = sqrt of it as f32.
//   Either output pointer may be NULL. Launch: grid = (1), block = 1024 (MUST be 1024).
// Several buffers (e.g. the parameter shards of a tensor-parallel rank) can be folded into one
// norm by launching sumsq_partial_f32 for each into disjoint slices of one partials buffer and
// one sumsq_final_f64 over all of them. The clip coefficient min(1, max_norm / (norm + 1e-6)) is
// computed by the host (or passed to adamw_f32 as grad_scale after a device->host read).

extern "C" __global__ void sumsq_partial_f32(const float* __restrict__ x, long long n,
                                             double* __restrict__ partials) {
    __shared__ double scratch[32];
    const long long stride = (long long)gridDim.x * blockDim.x;
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float a = x[i];
        acc += (double)(a * a);
    }
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

extern "C" __global__ void sumsq_final_f64(const double* __restrict__ partials, int p, float* out_norm,
                                           double* out_sumsq) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < p; i += blockDim.x) acc += partials[i];
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) {
        if (out_sumsq) out_sumsq[0] = acc;
        if (out_norm) out_norm[0] = (float)sqrt(acc);
    }
}
