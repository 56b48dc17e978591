// AdamW update (CPU: src/train/adamw.rs AdamW::step_scaled / adamw_update).
//
// ABI:
// adamw_f32
//   (float* params, const float* grads, float* m, float* v, unsigned short* params_bf16, long long n,
//    float beta1, float beta2, float eps, float decay, float step_size, float inv_sqrt_bc2,
//    float grad_scale)
//   params: [n] f32 master weights (updated in place); grads: [n] f32; m, v: [n] f32 moments
//   (updated in place); params_bf16: [n] bf16 copy of the UPDATED params, or NULL (not written).
//   The factors come from the host, computed by the CPU optimizer's own functions
//   (AdamW::step_factors, AdamW::decay_factor): step_size = lr / (1 - beta1^t) and
//   inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t) for the step number t AFTER incrementing (bias
//   corrections in f64, each factor rounded to f32 once); decay = 1 - lr * weight_decay for a
//   range that decays, 1 for one that does not (norms, biases): the CPU keeps (range, decays)
//   segments, so the host launches once per contiguous run of equal decay flags (pointer offsets
//   into params/grads/m/v/params_bf16).
//   grad_scale: the clipping coefficient min(1, max_norm / (norm + 1e-6)) (1 = no clipping);
//   it multiplies the gradient before anything else.
//     g = grad * grad_scale
//     m = beta1 * m + (1 - beta1) * g
//     v = beta2 * v + (1 - beta2) * g * g
//     p = p * decay - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
//   Every product, sum and quotient is rounded on its own (the _rn intrinsics: no fused
//   multiply-add), in the CPU's order, and sqrtf and the division are IEEE-rounded (NVRTC's
//   defaults): the update is the CPU's bit for bit, given the same gradients and factors.
//   Launch: block = 256, grid = (G) with any G >= 1 (grid-stride loop over n elements);
//   suggested G = min(ceil(n / 256), 16 * #SMs). No dynamic shared memory.

extern "C" __global__ void adamw_f32(float* __restrict__ params, const float* __restrict__ grads,
                                     float* __restrict__ m, float* __restrict__ v,
                                     unsigned short* __restrict__ params_bf16, long long n, float beta1,
                                     float beta2, float eps, float decay, float step_size, float inv_sqrt_bc2,
                                     float grad_scale) {
    const float omb1 = __fsub_rn(1.0f, beta1), omb2 = __fsub_rn(1.0f, beta2);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = __fmul_rn(grads[i], grad_scale);
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(omb1, g));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(omb2, g), g));
        m[i] = mi;
        v[i] = vi;
        const float denom = __fadd_rn(__fmul_rn(sqrtf(vi), inv_sqrt_bc2), eps);
        const float p = __fsub_rn(__fmul_rn(params[i], decay), __fdiv_rn(__fmul_rn(step_size, mi), denom));
        params[i] = p;
        if (params_bf16) params_bf16[i] = f32_to_bf16(p);
    }
}
