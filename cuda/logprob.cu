// Fused log-softmax statistics of the LM head and their backward
// (CPU: src/tensor/cpu/logits.rs logits_stats / logits_backward_inplace).
//
// ABI (N rows of V logits; T = float (_f32) or unsigned short bf16 (_bf16) for the logits; every
// statistic and every per-row input is f32):
//
// logprob_fwd_f32 / logprob_fwd_bf16
//   (const T* logits, const unsigned int* targets, float* lse, float* logp, float* entropy,
//    int n, int v)
//   logits: [N, V] T; targets: [N] (< V); lse, logp, entropy: [N] f32.
//   lse[i]     = log sum_j exp(z[i,j])
//   logp[i]    = z[i, targets[i]] - lse[i]
//   entropy[i] = lse[i] - sum_j softmax(z)[i,j] * z[i,j], computed with m = max_j z[i,j] as
//                log s - c / s, s = sum_j e^(z-m), c = sum_j e^(z-m) * (z-m) (two non-negative
//                terms, the same for z + const; not lse - sum e^(z-m) * z / s, which cancels two
//                terms of the size of m)
//   One pass over the row with a per-thread online (max, sum e^(z-max), sum e^(z-max)*(z-max))
//   triple, merged across the block; a thread takes 8 consecutive logits at a time (16-byte
//   loads) where the row starts 16-byte aligned, and the rest one at a time.
//   Launch: grid = (n), block = 512 (multiple of 32, <= 1024), no dynamic shared memory.
//
// logprob_bwd_f32 / logprob_bwd_bf16
//   (T* dlogits, const T* logits, const unsigned int* targets, const float* lse,
//    const float* dlogp, const float* dentropy, const float* entropy, int n, int v)
//   dlogits: [N, V] T (overwritten; MAY alias logits: every element is read before it is
//   written by the same thread); dlogp: [N] = dL/dlogp; dentropy: [N] = dL/dH or NULL (no entropy
//   term; then entropy may be NULL too); entropy: [N] the forward's H; lse: [N] the forward's lse.
//   With p_j = exp(z_j - lse), g = dlogp[i], e = dentropy[i] (0 if NULL), H = entropy[i]:
//     dlogits[i,j] = g * (onehot(j == target) - p_j) - e * p_j * (log p_j + H)
//   (d logp / dz = onehot - p;  dH / dz_j = -p_j (log p_j + H)). Rows with g == 0 and e == 0 are
//   written as exact zeros (like the CPU).
//   Launch: grid = (n), block = 512, no dynamic shared memory.
// logprob_bwd_f32_o16: logprob_bwd_f32 with dlogits in bf16 (unsigned short, rounded to nearest
//   even as it is written: the operand of the LM head's bf16 backward products, without a
//   rounding pass); dlogits must NOT alias logits (another buffer: half the bytes).

// (s, z) of a triple (m, s, z) moved to the larger maximum mn: z = sum e^(x - m) * (x - m)
// becomes a * (z + (m - mn) * s) with a = e^(m - mn). An empty triple (m = -inf: s = z = 0)
// stays 0 (its (m - mn) * s would be -inf * 0 = NaN).
__device__ __forceinline__ float lse3_moved_z(float m, float s, float z, float mn, float a) {
    return m == neg_inf_f() ? 0.0f : a * (z + (m - mn) * s);
}

// Merge (m2, s2, z2) into (m, s, z): s, z are sums of e^(x - m) and e^(x - m) * (x - m).
__device__ __forceinline__ void lse3_merge(float& m, float& s, float& z, float m2, float s2, float z2) {
    const float mn = fmaxf(m, m2);
    if (mn == neg_inf_f()) return;
    const float a = expf(m - mn), b = expf(m2 - mn);
    z = lse3_moved_z(m, s, z, mn, a) + lse3_moved_z(m2, s2, z2, mn, b);
    s = s * a + s2 * b;
    m = mn;
}

// Add logit x to the triple (m, s, z): s, z are sums of e^(x - m) and e^(x - m) * (x - m).
__device__ __forceinline__ void lse3_add1(float& m, float& s, float& z, float x) {
    if (x > m) {
        const float a = expf(m - x);  // m = -inf gives 0
        z = lse3_moved_z(m, s, z, x, a);  // (x itself adds e^0 * 0)
        s = s * a + 1.0f;
        m = x;
    } else if (x != neg_inf_f()) {  // a -inf logit adds nothing (and must not make NaN)
        const float e = expf(x - m);
        s += e;
        z += e * (x - m);
    }
}

// Add eight logits: the maximum moves once, then each adds e^(x - m) and e^(x - m) * (x - m), in
// order. A -inf logit adds nothing (selected out: e^(x - m) * (x - m) would be 0 * -inf); a NaN
// logit makes both sums NaN, as in lse3_add1.
__device__ __forceinline__ void lse3_add8(float& m, float& s, float& z, const float* x) {
    float mx = x[0];
#pragma unroll
    for (int k = 1; k < 8; ++k) mx = fmaxf(mx, x[k]);
    if (mx > m) {
        const float a = expf(m - mx);  // m = -inf gives 0
        z = lse3_moved_z(m, s, z, mx, a);
        s *= a;
        m = mx;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const bool none = x[k] == neg_inf_f();
        const float e = none ? 0.0f : expf(x[k] - m);
        s += e;
        z += none ? 0.0f : e * (x[k] - m);
    }
}

template <typename T>
__device__ void logprob_fwd(const T* __restrict__ logits, const unsigned int* __restrict__ targets,
                            float* __restrict__ lse, float* __restrict__ logp, float* __restrict__ entropy,
                            int n, int v) {
    __shared__ float sm[32], ss[32], sz[32];
    const int row = blockIdx.x;
    if (row >= n) return;
    const T* z = logits + (long long)row * v;
    float m = neg_inf_f(), s = 0.0f, zz = 0.0f;
    // groups of 8 with 16-byte loads where the row starts 16-byte aligned, the rest one at a time
    int j0 = 0;
    if (aligned16(z)) {
        const int groups = v / 8;
        for (int g = threadIdx.x; g < groups; g += blockDim.x) {
            float x[8];
            load8_f(z + 8 * g, x);
            lse3_add8(m, s, zz, x);
        }
        j0 = groups * 8;
    }
    for (int j = j0 + threadIdx.x; j < v; j += blockDim.x) lse3_add1(m, s, zz, load_f(z + j));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(ARBOR_FULL_MASK, m, o);
        const float s2 = __shfl_xor_sync(ARBOR_FULL_MASK, s, o);
        const float z2 = __shfl_xor_sync(ARBOR_FULL_MASK, zz, o);
        lse3_merge(m, s, zz, m2, s2, z2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
        sz[warp] = zz;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < nw ? sm[lane] : neg_inf_f();
        s = lane < nw ? ss[lane] : 0.0f;
        zz = lane < nw ? sz[lane] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float m2 = __shfl_xor_sync(ARBOR_FULL_MASK, m, o);
            const float s2 = __shfl_xor_sync(ARBOR_FULL_MASK, s, o);
            const float z2 = __shfl_xor_sync(ARBOR_FULL_MASK, zz, o);
            lse3_merge(m, s, zz, m2, s2, z2);
        }
        if (lane == 0) {
            const float ls = logf(s);
            const float l = m + ls;
            lse[row] = l;
            logp[row] = load_f(z + targets[row]) - l;
            entropy[row] = ls - zz / s;
        }
    }
}

extern "C" __global__ void logprob_fwd_f32(const float* logits, const unsigned int* targets, float* lse,
                                           float* logp, float* entropy, int n, int v) {
    logprob_fwd<float>(logits, targets, lse, logp, entropy, n, v);
}

extern "C" __global__ void logprob_fwd_bf16(const unsigned short* logits, const unsigned int* targets, float* lse,
                                            float* logp, float* entropy, int n, int v) {
    logprob_fwd<unsigned short>(logits, targets, lse, logp, entropy, n, v);
}

// d logits of one logit x (lse l, dL/dlogp g, dL/dH e, entropy h; `target`: the row's target)
__device__ __forceinline__ float logprob_grad(float x, float l, float g, float e, float h, bool target) {
    const float lp = x - l;
    float d = -expf(lp) * (g + e * (lp + h));
    if (target) d += g;
    return d;
}

template <typename T, typename TO = T>
__device__ void logprob_bwd(TO* dlogits, const T* logits, const unsigned int* __restrict__ targets,
                            const float* __restrict__ lse, const float* __restrict__ dlogp,
                            const float* __restrict__ dentropy, const float* __restrict__ entropy, int n,
                            int v) {
    const int row = blockIdx.x;
    if (row >= n) return;
    const long long off = (long long)row * v;
    const float g = dlogp[row];
    const float e = dentropy ? dentropy[row] : 0.0f;
    const float h = (dentropy && entropy) ? entropy[row] : 0.0f;
    const int t = (int)targets[row];
    // groups of 8 with 16-byte accesses where both rows start 16-byte aligned, the rest one at a
    // time (the same values)
    const bool vec = aligned16(dlogits + off) && aligned16(logits + off);
    const int j0 = vec ? v / 8 * 8 : 0;
    if (g == 0.0f && e == 0.0f) {
        const float zero[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int k = threadIdx.x; k < j0 / 8; k += blockDim.x) store8_f(dlogits + off + 8 * k, zero);
        for (int j = j0 + threadIdx.x; j < v; j += blockDim.x) store_f(dlogits + off + j, 0.0f);
        return;
    }
    const float l = lse[row];
    for (int k = threadIdx.x; k < j0 / 8; k += blockDim.x) {
        float x[8];
        load8_f(logits + off + 8 * k, x);
#pragma unroll
        for (int i = 0; i < 8; ++i) x[i] = logprob_grad(x[i], l, g, e, h, 8 * k + i == t);
        store8_f(dlogits + off + 8 * k, x);
    }
    for (int j = j0 + threadIdx.x; j < v; j += blockDim.x) {
        store_f(dlogits + off + j, logprob_grad(load_f(logits + off + j), l, g, e, h, j == t));
    }
}

extern "C" __global__ void logprob_bwd_f32(float* dlogits, const float* logits, const unsigned int* targets,
                                           const float* lse, const float* dlogp, const float* dentropy,
                                           const float* entropy, int n, int v) {
    logprob_bwd<float>(dlogits, logits, targets, lse, dlogp, dentropy, entropy, n, v);
}

extern "C" __global__ void logprob_bwd_bf16(unsigned short* dlogits, const unsigned short* logits,
                                            const unsigned int* targets, const float* lse, const float* dlogp,
                                            const float* dentropy, const float* entropy, int n, int v) {
    logprob_bwd<unsigned short>(dlogits, logits, targets, lse, dlogp, dentropy, entropy, n, v);
}

extern "C" __global__ void logprob_bwd_f32_o16(unsigned short* __restrict__ dlogits,
                                               const float* __restrict__ logits, const unsigned int* targets,
                                               const float* lse, const float* dlogp, const float* dentropy,
                                               const float* entropy, int n, int v) {
    logprob_bwd<float, unsigned short>(dlogits, logits, targets, lse, dlogp, dentropy, entropy, n, v);
}
