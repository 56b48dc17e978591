// Token sampling on the device: one token per row of logits, with its behaviour log-probability
// and the entropy of the temperature-scaled distribution (CPU: src/rollout/sampler.rs `sample`,
// its greedy and plain-temperature paths; top-k/top-p stay on the host for now).
//
// ABI (N rows of V logits; T = float (_f32) or unsigned short bf16 (_bf16); everything else f32,
// the uniforms f64):
//
// sample_rows_f32 / sample_rows_bf16
//   (const T* logits, const double* uniforms, float temperature, unsigned int* tokens,
//    float* logp, float* entropy, int n, int v)
//   logits: [N, V]; uniforms: [N] in [0, 1), one per row, drawn by the host from each sequence's
//   random stream exactly as the CPU sampler draws its one uniform per sampled token (so a row's
//   draw is the same pure function of seed and coordinates on both backends; ignored, and may be
//   NULL, when temperature <= 0); tokens, logp, entropy: [N] (overwritten).
//   With t = temperature if > 0 else 1, m = max_j z_j, s_j = (z_j - m) / t (f32), w_j = expf(s_j)
//   (f32), S = sum_j w_j and SZ = sum_j w_j * s_j (both f64):
//     logp[i]    = s_token - log S (f64, stored as f32)
//     entropy[i] = log S - SZ / S
//     token      = temperature <= 0: the first maximum of the row;
//                  otherwise the inverse CDF in vocabulary order: u = uniforms[i] * S, then
//                  u -= w_j for j = 0, 1, ... and the first j where u <= 0 (V - 1 if none).
//   Thread c of the block owns the contiguous chunk [c*C, min(V, (c+1)*C)), C = ceil(V / 256): it
//   reduces its chunk in order (f64 sums, first maximum); thread 0 then adds the 256 chunk sums in
//   chunk order and walks them, and the chunk holding u element by element. The result is a
//   fixed function of the row (no atomics), and the same for every N and every row position.
//   Launch: grid = (n), block = 256 (MUST be 256), no dynamic shared memory.

#define SAMPLE_BLOCK 256

template <typename T>
__device__ void sample_rows(const T* __restrict__ logits, const double* __restrict__ uniforms, float temperature,
                            unsigned int* __restrict__ tokens, float* __restrict__ logp,
                            float* __restrict__ entropy, int n, int v) {
    __shared__ float red[32];
    __shared__ double csum[SAMPLE_BLOCK], csz[SAMPLE_BLOCK];
    __shared__ float cmax[SAMPLE_BLOCK];
    __shared__ int carg[SAMPLE_BLOCK];
    const int row = blockIdx.x;
    if (row >= n) return;
    const T* z = logits + (long long)row * v;
    const float t = temperature > 0.0f ? temperature : 1.0f;
    const int chunk = (v + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK;
    const int lo = min(v, (int)threadIdx.x * chunk), hi = min(v, lo + chunk);

    // chunk maximum and its first position
    float mx = neg_inf_f();
    int arg = -1;
    for (int j = lo; j < hi; ++j) {
        const float x = load_f(z + j);
        if (arg < 0 || x > mx) {
            mx = x;
            arg = j;
        }
    }
    const float m = block_max(mx, red);

    // chunk sums of w and w * s, in order
    double s = 0.0, sz = 0.0;
    for (int j = lo; j < hi; ++j) {
        const float sj = (load_f(z + j) - m) / t;
        const float w = expf(sj);
        s += (double)w;
        sz += (double)w * (double)sj;
    }
    csum[threadIdx.x] = s;
    csz[threadIdx.x] = sz;
    cmax[threadIdx.x] = mx;
    carg[threadIdx.x] = arg;
    __syncthreads();
    if (threadIdx.x != 0) return;

    double total = 0.0, total_sz = 0.0;
    for (int c = 0; c < SAMPLE_BLOCK; ++c) {
        total += csum[c];
        total_sz += csz[c];
    }
    int pick = v - 1;
    if (temperature <= 0.0f) {
        float best = neg_inf_f();
        int at = -1;
        for (int c = 0; c < SAMPLE_BLOCK; ++c) {
            if (carg[c] >= 0 && (at < 0 || cmax[c] > best)) {
                best = cmax[c];
                at = carg[c];
            }
        }
        pick = at < 0 ? 0 : at;
    } else {
        double u = uniforms[row] * total;
        int c = 0;
        // whole chunks first; the chunk where u would reach zero is walked element by element,
        // continuing into later chunks if rounding leaves u just above zero at its end
        while (c < SAMPLE_BLOCK && u - csum[c] > 0.0) {
            u -= csum[c];
            ++c;
        }
        bool found = false;
        for (int j = min(v, c * chunk); j < v && !found; ++j) {
            const float w = expf((load_f(z + j) - m) / t);
            u -= (double)w;
            if (u <= 0.0) {
                pick = j;
                found = true;
            }
        }
    }
    const double log_s = log(total);
    tokens[row] = (unsigned int)pick;
    logp[row] = (float)((double)((load_f(z + pick) - m) / t) - log_s);
    entropy[row] = (float)(log_s - total_sz / total);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_BLOCK)
    sample_rows_f32(const float* logits, const double* uniforms, float temperature, unsigned int* tokens,
                    float* logp, float* entropy, int n, int v) {
    sample_rows<float>(logits, uniforms, temperature, tokens, logp, entropy, n, v);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_BLOCK)
    sample_rows_bf16(const unsigned short* logits, const double* uniforms, float temperature, unsigned int* tokens,
                     float* logp, float* entropy, int n, int v) {
    sample_rows<unsigned short>(logits, uniforms, temperature, tokens, logp, entropy, n, v);
}
