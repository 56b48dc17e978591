// Backward of the causal GQA flash attention of attention_fwd.cu (CPU: src/attention/cpu.rs
// attention_backward). Deterministic: no atomics; dK/dV of a kv head are summed over the query
// heads of its group inside one block, or per query head and then by attn_bwd_group_sum_f32 in
// head order; dQ is computed by a separate kernel.
//
// Math (per sequence and query head h, kv head g = h / (H / KV), scale = 1 / sqrt(head_dim)):
//   P = exp(scale * Q K^T - lse) (causal: P[t, j] = 0 for j > t), Di = sum_d dO[t,d] * O[t,d],
//   dP = dO V^T, dS = P * (dP - Di),
//   dQ = scale * dS K,   dK = scale * sum_{h in group} dS^T Q,   dV = sum_{h in group} P^T dO.
// P is recomputed from q, k and the forward's lse; no T x T buffer.
//
// Layouts and strides are those of attention_fwd.cu (q/k/v/out heads at column h*head_dim of
// rows with a row stride; lse and delta are [N, H] f32, index t * num_heads + h). Gradients are
// f32: dout [N, dout_stride], dq/dk/dv written (OVERWRITTEN, like the CPU) with their own row
// strides, so they can land straight in the packed dqkv buffer [N, (H + 2KV) * D]:
// dq = dqkv, dk = dqkv + H*D, dv = dqkv + (H+KV)*D, strides (H + 2KV) * D.
// T = float (_f32) or bf16 (_bf16) is the storage of q, k, v and out (the saved activations).
// DM in the entry name (32, 64, 128) is the largest head_dim the entry supports (1 <= head_dim
// <= DM; pick the smallest DM >= head_dim).
//
// 1. attn_bwd_delta_f32 / attn_bwd_delta_bf16
//    (float* delta, const T* out, int out_stride, const float* dout, int dout_stride, int n,
//     int num_heads, int head_dim)
//    delta[t * num_heads + h] = sum_d dout[t, h*D + d] * out[t, h*D + d].
//    Launch: grid = (n), block = 128 (warp w handles heads w, w + 4, ...), no dynamic shared memory.
//
// 2. attn_bwd_dkdv_{32,64,128}_{f32,bf16}
//    (float* dk, int dk_stride, float* dv, int dv_stride, const T* q, int q_stride, const T* k,
//     int k_stride, const T* v, int v_stride, const float* dout, int dout_stride, const float* lse,
//     const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim,
//     int heads_per_block)
//    Block = 64 keys of one sequence against `heads_per_block` consecutive query heads of one kv
//    group (the first is the block's y index times heads_per_block); loops over those heads and
//    over query tiles of 32 rows from the key tile's diagonal to the sequence end, and writes its
//    sums at column y * head_dim of dk and dv:
//    - heads_per_block = num_heads / kv_heads: y is the kv head, dk and dv the gradients;
//      grid = (ceil(max_seq_len / 64), kv_heads, n_seq).
//    - heads_per_block = 1: y is the query head, dk and dv per-head partials ([N, num_heads,
//      head_dim], row stride num_heads * head_dim) for attn_bwd_group_sum_f32; grid =
//      (ceil(max_seq_len / 64), num_heads, n_seq): a group's heads run in parallel.
//    Launch: block = 256 (MUST be 256), dynamic shared memory = 192 * (DM + 1) * 4 bytes (DM 32:
//    25344, 64: 49920, 128: 99072; raise the attribute above 48 KiB).
//
// 2b. attn_bwd_group_sum_f32
//    (float* dk, int dk_stride, float* dv, int dv_stride, const float* pk, const float* pv, int n,
//     int num_heads, int kv_heads, int head_dim)
//    dk[t, g, :] = sum over hh = 0 .. group - 1 of pk[t, g * group + hh, :] in that order (and dv
//    of pv): the partials of heads_per_block = 1 (this file's kernel or attention_mma_bwd.cu's)
//    summed into each kv head's gradient. Any grid of 1-D blocks (grid-stride over
//    n * kv_heads * head_dim).
//
// 3. attn_bwd_dq_{32,64,128}_{f32,bf16}
//    (float* dq, int dq_stride, const T* q, int q_stride, const T* k, int k_stride, const T* v,
//     int v_stride, const float* dout, int dout_stride, const float* lse, const float* delta,
//     const int* cu_seqlens, int num_heads, int kv_heads, int head_dim)
//    Block = 64 query rows of one head of one sequence; loops over key tiles of 32 up to the
//    diagonal.
//    Launch: grid = (ceil(max_seq_len / 64), num_heads, n_seq), block = 256 (MUST be 256),
//    dynamic shared memory = 192 * (DM + 1) * 4 bytes (same table).
//
// Order: delta first, then dkdv and dq (independent of each other).

#define AB_BIG 64    // rows owned by a block (keys in dkdv, queries in dq)
#define AB_SMALL 32  // rows streamed per inner step (queries in dkdv, keys in dq)

template <typename T>
__device__ void attn_bwd_delta(float* __restrict__ delta, const T* __restrict__ out, int out_stride,
                               const float* __restrict__ dout, int dout_stride, int n, int num_heads,
                               int head_dim) {
    const int t = blockIdx.x;
    if (t >= n) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const T* orow = out + (long long)t * out_stride;
    const float* drow = dout + (long long)t * dout_stride;
    for (int h = warp; h < num_heads; h += nw) {
        float a = 0.0f;
        for (int d = lane; d < head_dim; d += 32) a += drow[h * head_dim + d] * load_f(orow + h * head_dim + d);
        a = warp_sum(a);
        if (lane == 0) delta[(long long)t * num_heads + h] = a;
    }
}

extern "C" __global__ void attn_bwd_delta_f32(float* delta, const float* out, int out_stride, const float* dout,
                                              int dout_stride, int n, int num_heads, int head_dim) {
    attn_bwd_delta<float>(delta, out, out_stride, dout, dout_stride, n, num_heads, head_dim);
}

extern "C" __global__ void attn_bwd_delta_bf16(float* delta, const unsigned short* out, int out_stride,
                                               const float* dout, int dout_stride, int n, int num_heads,
                                               int head_dim) {
    attn_bwd_delta<unsigned short>(delta, out, out_stride, dout, dout_stride, n, num_heads, head_dim);
}

// ---------------------------------------------------------------------------------------------
// dK, dV
// ---------------------------------------------------------------------------------------------

template <typename T, int DM>
__device__ void attn_bwd_dkdv(float* __restrict__ dk, int dk_stride, float* __restrict__ dv, int dv_stride,
                              const T* __restrict__ q, int q_stride, const T* __restrict__ k, int k_stride,
                              const T* __restrict__ v, int v_stride, const float* __restrict__ dout,
                              int dout_stride, const float* __restrict__ lse, const float* __restrict__ delta,
                              const int* __restrict__ cu_seqlens, int num_heads, int kv_heads, int head_dim,
                              int heads_per_block) {
    extern __shared__ float smem[];
    constexpr int LD = DM + 1;
    constexpr int NE = DM / 4;
    constexpr int NI = AB_SMALL / 4;  // query rows per thread per step
    float* Ks = smem;                 // [64][LD]
    float* Vs = Ks + AB_BIG * LD;     // [64][LD]
    float* Qs = Vs + AB_BIG * LD;     // [32][LD]
    float* Ds = Qs + AB_SMALL * LD;   // [32][LD]  dO rows
    __shared__ float s_lse[AB_SMALL], s_delta[AB_SMALL];

    const int seq = blockIdx.z, y = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int k0 = blockIdx.x * AB_BIG;
    if (k0 >= len) return;
    const int h_first = y * heads_per_block, g = h_first / (num_heads / kv_heads);
    const int tid = threadIdx.x, lane = tid & 31;
    const int kr = tid >> 2, c = tid & 3;
    const int kj = k0 + kr;  // key position of this thread's row
    const float scale = 1.0f / sqrtf((float)head_dim);

    load_rows_f32<T, DM>(Ks, LD, AB_BIG, k + (long long)start * k_stride + (long long)g * head_dim, k_stride, k0,
                         len, head_dim);
    load_rows_f32<T, DM>(Vs, LD, AB_BIG, v + (long long)start * v_stride + (long long)g * head_dim, v_stride, k0,
                         len, head_dim);

    float adk[NE], adv[NE];
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        adk[e] = 0.0f;
        adv[e] = 0.0f;
    }
    for (int h = h_first; h < h_first + heads_per_block; ++h) {
        const T* qb = q + (long long)start * q_stride + (long long)h * head_dim;
        const float* db = dout + (long long)start * dout_stride + (long long)h * head_dim;
        for (int i0 = k0; i0 < len; i0 += AB_SMALL) {
            __syncthreads();  // previous Qs/Ds consumed (and Ks/Vs written on the first pass)
            load_rows_f32<T, DM>(Qs, LD, AB_SMALL, qb, q_stride, i0, len, head_dim);
            load_rows_f32<float, DM>(Ds, LD, AB_SMALL, db, dout_stride, i0, len, head_dim);
            if (tid < AB_SMALL) {
                const int i = i0 + tid;
                const long long at = (long long)(start + i) * num_heads + h;
                s_lse[tid] = i < len ? lse[at] : 0.0f;
                s_delta[tid] = i < len ? delta[at] : 0.0f;
            }
            __syncthreads();

            float s[NI], dp[NI];
#pragma unroll
            for (int ii = 0; ii < NI; ++ii) {
                s[ii] = 0.0f;
                dp[ii] = 0.0f;
            }
            const float* kr_s = Ks + kr * LD;
            const float* vr_s = Vs + kr * LD;
            for (int d = 0; d < DM; ++d) {
                const float kv = kr_s[d], vv = vr_s[d];
#pragma unroll
                for (int ii = 0; ii < NI; ++ii) {
                    s[ii] += kv * Qs[(c + 4 * ii) * LD + d];
                    dp[ii] += vv * Ds[(c + 4 * ii) * LD + d];
                }
            }
#pragma unroll
            for (int ii = 0; ii < NI; ++ii) {
                const int il = c + 4 * ii;
                const int i = i0 + il;
                const bool ok = i < len && kj <= i && kj < len;
                const float p = ok ? expf(s[ii] * scale - s_lse[il]) : 0.0f;
                s[ii] = p;
                dp[ii] = p * (dp[ii] - s_delta[il]);
            }
            // dV += P^T dO, dK += dS^T Q: the 4 threads of a key row exchange P and dS by shuffles.
#pragma unroll
            for (int ii = 0; ii < NI; ++ii) {
#pragma unroll
                for (int cc = 0; cc < 4; ++cc) {
                    const int src = (lane & ~3) | cc;
                    const float p = __shfl_sync(ARBOR_FULL_MASK, s[ii], src);
                    const float ds = __shfl_sync(ARBOR_FULL_MASK, dp[ii], src);
                    const int il = cc + 4 * ii;
                    const float* qrow = Qs + il * LD + c;
                    const float* drow = Ds + il * LD + c;
#pragma unroll
                    for (int e = 0; e < NE; ++e) {
                        adv[e] += p * drow[4 * e];
                        adk[e] += ds * qrow[4 * e];
                    }
                }
            }
        }
    }
    // Stage through shared memory (Ks, Vs are free now) for coalesced row stores.
    __syncthreads();
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        Ks[kr * LD + c + 4 * e] = adk[e] * scale;
        Vs[kr * LD + c + 4 * e] = adv[e];
    }
    __syncthreads();
    float* dkb = dk + (long long)start * dk_stride + (long long)y * head_dim;
    float* dvb = dv + (long long)start * dv_stride + (long long)y * head_dim;
    for (int idx = tid; idx < AB_BIG * DM; idx += blockDim.x) {
        const int rr = idx / DM, d = idx - (idx / DM) * DM;
        if (k0 + rr < len && d < head_dim) {
            dkb[(long long)(k0 + rr) * dk_stride + d] = Ks[rr * LD + d];
            dvb[(long long)(k0 + rr) * dv_stride + d] = Vs[rr * LD + d];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dQ
// ---------------------------------------------------------------------------------------------

template <typename T, int DM>
__device__ void attn_bwd_dq(float* __restrict__ dq, int dq_stride, const T* __restrict__ q, int q_stride,
                            const T* __restrict__ k, int k_stride, const T* __restrict__ v, int v_stride,
                            const float* __restrict__ dout, int dout_stride, const float* __restrict__ lse,
                            const float* __restrict__ delta, const int* __restrict__ cu_seqlens, int num_heads,
                            int kv_heads, int head_dim) {
    extern __shared__ float smem[];
    constexpr int LD = DM + 1;
    constexpr int NE = DM / 4;
    constexpr int NJ = AB_SMALL / 4;  // keys per thread per step
    float* Qs = smem;                 // [64][LD]
    float* Ds = Qs + AB_BIG * LD;     // [64][LD]  dO rows
    float* Ks = Ds + AB_BIG * LD;     // [32][LD]
    float* Vs = Ks + AB_SMALL * LD;   // [32][LD]

    const int seq = blockIdx.z, h = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    // the longest query blocks (the causal mask's last) start first, so they do not make the tail
    const int q0 = (gridDim.x - 1 - blockIdx.x) * AB_BIG;
    if (q0 >= len) return;
    const int g = h / (num_heads / kv_heads);
    const int tid = threadIdx.x, lane = tid & 31;
    const int r = tid >> 2, c = tid & 3;
    const int qi = q0 + r;
    const float scale = 1.0f / sqrtf((float)head_dim);

    load_rows_f32<T, DM>(Qs, LD, AB_BIG, q + (long long)start * q_stride + (long long)h * head_dim, q_stride, q0,
                         len, head_dim);
    load_rows_f32<float, DM>(Ds, LD, AB_BIG, dout + (long long)start * dout_stride + (long long)h * head_dim,
                             dout_stride, q0, len, head_dim);
    const long long at = (long long)(start + (qi < len ? qi : q0)) * num_heads + h;
    const float row_lse = lse[at];
    const float row_delta = delta[at];
    const T* kb = k + (long long)start * k_stride + (long long)g * head_dim;
    const T* vb = v + (long long)start * v_stride + (long long)g * head_dim;

    float adq[NE];
#pragma unroll
    for (int e = 0; e < NE; ++e) adq[e] = 0.0f;
    const int kend = min(q0 + AB_BIG, len);
    for (int k0 = 0; k0 < kend; k0 += AB_SMALL) {
        __syncthreads();
        load_rows_f32<T, DM>(Ks, LD, AB_SMALL, kb, k_stride, k0, len, head_dim);
        load_rows_f32<T, DM>(Vs, LD, AB_SMALL, vb, v_stride, k0, len, head_dim);
        __syncthreads();

        float s[NJ], dp[NJ];
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
            s[jj] = 0.0f;
            dp[jj] = 0.0f;
        }
        const float* qr = Qs + r * LD;
        const float* dr = Ds + r * LD;
        for (int d = 0; d < DM; ++d) {
            const float qv = qr[d], dv = dr[d];
#pragma unroll
            for (int jj = 0; jj < NJ; ++jj) {
                s[jj] += qv * Ks[(c + 4 * jj) * LD + d];
                dp[jj] += dv * Vs[(c + 4 * jj) * LD + d];
            }
        }
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
            const int j = k0 + c + 4 * jj;
            const bool ok = qi < len && j <= qi;
            const float p = ok ? expf(s[jj] * scale - row_lse) : 0.0f;
            dp[jj] = p * (dp[jj] - row_delta);  // dS
        }
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) {
                const float ds = __shfl_sync(ARBOR_FULL_MASK, dp[jj], (lane & ~3) | cc);
                const float* krow = Ks + (cc + 4 * jj) * LD + c;
#pragma unroll
                for (int e = 0; e < NE; ++e) adq[e] += ds * krow[4 * e];
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < NE; ++e) Qs[r * LD + c + 4 * e] = adq[e] * scale;
    __syncthreads();
    float* dqb = dq + (long long)start * dq_stride + (long long)h * head_dim;
    for (int idx = tid; idx < AB_BIG * DM; idx += blockDim.x) {
        const int rr = idx / DM, d = idx - (idx / DM) * DM;
        if (q0 + rr < len && d < head_dim) dqb[(long long)(q0 + rr) * dq_stride + d] = Qs[rr * LD + d];
    }
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_32_f32(float* dk, int dk_stride, float* dv, int dv_stride, const float* q, int q_stride,
        const float* k, int k_stride, const float* v, int v_stride, const float* dout, int dout_stride,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim,
        int heads_per_block) {
    attn_bwd_dkdv<float, 32>(dk, dk_stride, dv, dv_stride, q, q_stride, k, k_stride, v, v_stride, dout,
                              dout_stride, lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_64_f32(float* dk, int dk_stride, float* dv, int dv_stride, const float* q, int q_stride,
        const float* k, int k_stride, const float* v, int v_stride, const float* dout, int dout_stride,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim,
        int heads_per_block) {
    attn_bwd_dkdv<float, 64>(dk, dk_stride, dv, dv_stride, q, q_stride, k, k_stride, v, v_stride, dout,
                              dout_stride, lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_128_f32(float* dk, int dk_stride, float* dv, int dv_stride, const float* q, int q_stride,
        const float* k, int k_stride, const float* v, int v_stride, const float* dout, int dout_stride,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim,
        int heads_per_block) {
    attn_bwd_dkdv<float, 128>(dk, dk_stride, dv, dv_stride, q, q_stride, k, k_stride, v, v_stride, dout,
                              dout_stride, lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_32_bf16(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* q, int q_stride,
        const unsigned short* k, int k_stride, const unsigned short* v, int v_stride, const float* dout, int dout_stride,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim,
        int heads_per_block) {
    attn_bwd_dkdv<unsigned short, 32>(dk, dk_stride, dv, dv_stride, q, q_stride, k, k_stride, v, v_stride, dout,
                              dout_stride, lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_64_bf16(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* q, int q_stride,
        const unsigned short* k, int k_stride, const unsigned short* v, int v_stride, const float* dout, int dout_stride,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim,
        int heads_per_block) {
    attn_bwd_dkdv<unsigned short, 64>(dk, dk_stride, dv, dv_stride, q, q_stride, k, k_stride, v, v_stride, dout,
                              dout_stride, lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_128_bf16(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* q, int q_stride,
        const unsigned short* k, int k_stride, const unsigned short* v, int v_stride, const float* dout, int dout_stride,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim,
        int heads_per_block) {
    attn_bwd_dkdv<unsigned short, 128>(dk, dk_stride, dv, dv_stride, q, q_stride, k, k_stride, v, v_stride, dout,
                              dout_stride, lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dq_32_f32(float* dq, int dq_stride, const float* q, int q_stride, const float* k, int k_stride,
        const float* v, int v_stride, const float* dout, int dout_stride, const float* lse, const float* delta,
        const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    attn_bwd_dq<float, 32>(dq, dq_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride, lse,
                            delta, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dq_64_f32(float* dq, int dq_stride, const float* q, int q_stride, const float* k, int k_stride,
        const float* v, int v_stride, const float* dout, int dout_stride, const float* lse, const float* delta,
        const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    attn_bwd_dq<float, 64>(dq, dq_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride, lse,
                            delta, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dq_128_f32(float* dq, int dq_stride, const float* q, int q_stride, const float* k, int k_stride,
        const float* v, int v_stride, const float* dout, int dout_stride, const float* lse, const float* delta,
        const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    attn_bwd_dq<float, 128>(dq, dq_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride, lse,
                            delta, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dq_32_bf16(float* dq, int dq_stride, const unsigned short* q, int q_stride, const unsigned short* k, int k_stride,
        const unsigned short* v, int v_stride, const float* dout, int dout_stride, const float* lse, const float* delta,
        const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    attn_bwd_dq<unsigned short, 32>(dq, dq_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride, lse,
                            delta, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dq_64_bf16(float* dq, int dq_stride, const unsigned short* q, int q_stride, const unsigned short* k, int k_stride,
        const unsigned short* v, int v_stride, const float* dout, int dout_stride, const float* lse, const float* delta,
        const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    attn_bwd_dq<unsigned short, 64>(dq, dq_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride, lse,
                            delta, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dq_128_bf16(float* dq, int dq_stride, const unsigned short* q, int q_stride, const unsigned short* k, int k_stride,
        const unsigned short* v, int v_stride, const float* dout, int dout_stride, const float* lse, const float* delta,
        const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    attn_bwd_dq<unsigned short, 128>(dq, dq_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride, lse,
                            delta, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void attn_bwd_group_sum_f32(float* __restrict__ dk, int dk_stride, float* __restrict__ dv,
                                                  int dv_stride, const float* __restrict__ pk,
                                                  const float* __restrict__ pv, int n, int num_heads, int kv_heads,
                                                  int head_dim) {
    const int group = num_heads / kv_heads;
    const long long total = (long long)n * kv_heads * head_dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int d = (int)(i % head_dim);
        const long long tg = i / head_dim;
        const int g = (int)(tg % kv_heads);
        const long long t = tg / kv_heads;
        const float* a = pk + (t * num_heads + (long long)g * group) * head_dim + d;
        const float* b = pv + (t * num_heads + (long long)g * group) * head_dim + d;
        float sk = 0.0f, sv = 0.0f;
        for (int hh = 0; hh < group; ++hh) {
            sk += a[(long long)hh * head_dim];
            sv += b[(long long)hh * head_dim];
        }
        dk[t * dk_stride + (long long)g * head_dim + d] = sk;
        dv[t * dv_stride + (long long)g * head_dim + d] = sv;
    }
}
