// AdamW update (CPU: src/train/adamw.rs AdamW::step_scaled / adamw_update).
//
// ABI:
// adamw_f32
//   (float* params, const float* grads, float* m, float* v, unsigned short* params_bf16, long long n,
//    float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
//    float grad_scale)
//   params: [n] f32 master weights (updated in place); grads: [n] f32; m, v: [n] f32 moments
//   (updated in place); params_bf16: [n] bf16 copy of the UPDATED params, or NULL (not written).
//   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t with t the step number AFTER incrementing (t >= 1).
//   grad_scale: the clipping coefficient min(1, max_norm / (norm + 1e-6)) (1 = no clipping);
//   it multiplies the gradient before anything else.
//   weight_decay: lambda for this range; pass 0 for ranges that do not decay (norms, biases): the
//   CPU keeps (range, decays) segments, so the host launches once per contiguous run of
//   equal decay flags (pointer offsets into params/grads/m/v/params_bf16).
//     g = grad * grad_scale
//     m = beta1 * m + (1 - beta1) * g
//     v = beta2 * v + (1 - beta2) * g * g
//     p = p * (1 - lr * weight_decay) - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
//   with step_size = lr / bc1 and inv_sqrt_bc2 = 1 / sqrt(bc2), both computed in f64 from the f32
//   arguments and rounded to f32 once per thread (the CPU computes bc1, bc2 in f64 and rounds
//   step_size and inv_sqrt_bc2 to f32: only the f32 rounding of bc1/bc2 in transit differs).
//   Launch: block = 256, grid = (G) with any G >= 1 (grid-stride loop over n elements);
//   suggested G = min(ceil(n / 256), 16 * #SMs). No dynamic shared memory.

extern "C" __global__ void adamw_f32(float* __restrict__ params, const float* __restrict__ grads,
                                     float* __restrict__ m, float* __restrict__ v,
                                     unsigned short* __restrict__ params_bf16, long long n, float lr,
                                     float beta1, float beta2, float eps, float weight_decay, float bc1,
                                     float bc2, float grad_scale) {
    const float step_size = (float)((double)lr / (double)bc1);
    const float inv_sqrt_bc2 = (float)(1.0 / sqrt((double)bc2));
    const float decay = 1.0f - lr * weight_decay;
    const float omb1 = 1.0f - beta1, omb2 = 1.0f - beta2;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = grads[i] * grad_scale;
        const float mi = beta1 * m[i] + omb1 * g;
        const float vi = beta2 * v[i] + omb2 * g * g;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
        const float p = params[i] * decay - step_size * mi / denom;
        params[i] = p;
        if (params_bf16) params_bf16[i] = f32_to_bf16(p);
    }
}
