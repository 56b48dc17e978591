// Causal GQA attention forward over a packed variable-length batch, flash style (online softmax,
// only the row log-sum-exp is kept). CPU: src/attention/cpu.rs attention_forward.
//
// ABI. Entries attn_fwd_{32,64,128}_{f32,bf16}: the number is DM, the largest head_dim the entry
// supports; any runtime head_dim with 1 <= head_dim <= DM works (dims past head_dim are zero
// padded), so the host picks the smallest DM >= head_dim. T = float (_f32) / bf16 (_bf16).
//
//   (T* out, int out_stride, float* lse, const T* q, int q_stride, const T* k, int k_stride,
//    const T* v, int v_stride, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim)
//
//   Tokens are packed: sequence s is tokens [cu_seqlens[s], cu_seqlens[s+1]) (cu_seqlens: [n_seq+1],
//   cu_seqlens[0] = 0, non-decreasing; empty sequences allowed). Positions inside a sequence are
//   0-based; query t attends to keys 0..=t of its own sequence (causal).
//   q: head h of token t at q[t * q_stride + h * head_dim + d]        (H heads)
//   k: kv head g of token t at k[t * k_stride + g * head_dim + d]     (KV heads)
//   v: kv head g of token t at v[t * v_stride + g * head_dim + d]
//   For the packed q|k|v rows of the model ([N, (H + 2KV) * D]): q = qkv, k = qkv + H*D,
//   v = qkv + (H+KV)*D, and all three strides = (H + 2KV) * D.
//   out: head h of token t at out[t * out_stride + h * head_dim + d] (out_stride = H*D normally).
//   lse: [N, H] f32, lse[t * num_heads + h] = log sum_j exp(scale * q_t . k_j)  (the CPU layout).
//   GQA: query head h reads kv head g = h / (num_heads / kv_heads). scale = 1 / sqrt(head_dim).
//   out_t = sum_j softmax_j(scale * q_t . k_j) v_j.
//
//   Launch: grid = (ceil(max_seq_len / 64), num_heads, n_seq), block = 256 (MUST be 256),
//   dynamic shared memory = 192 * (DM + 1) * 4 bytes:
//       DM = 32: 25344 B,  DM = 64: 49920 B,  DM = 128: 99072 B
//   (above 48 KiB the host must first raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
//   Tiles: 64 query rows x 64 keys; thread t owns query row t / 4 and keys (t % 4) + 4i of each key
//   tile, and output dims (t % 4) + 4e. Blocks whose query tile starts past the sequence end exit.

#define AF_BQ 64
#define AF_BK 64

template <typename T, int DM>
__device__ void attn_fwd(T* __restrict__ out, int out_stride, float* __restrict__ lse, const T* __restrict__ q,
                         int q_stride, const T* __restrict__ k, int k_stride, const T* __restrict__ v,
                         int v_stride, const int* __restrict__ cu_seqlens, int num_heads, int kv_heads,
                         int head_dim) {
    extern __shared__ float smem[];
    constexpr int LD = DM + 1;
    constexpr int NE = DM / 4;           // output dims per thread
    constexpr int NJ = AF_BK / 4;        // keys per thread per tile
    float* Qs = smem;                    // [BQ][LD]
    float* Ks = Qs + AF_BQ * LD;         // [BK][LD]
    float* Vs = Ks + AF_BK * LD;         // [BK][LD]

    const int seq = blockIdx.z, h = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    // the longest query blocks (the causal mask's last) start first, so they do not make the tail
    const int q0 = (gridDim.x - 1 - blockIdx.x) * AF_BQ;
    if (q0 >= len) return;
    const int g = h / (num_heads / kv_heads);
    const int tid = threadIdx.x, lane = tid & 31;
    const int r = tid >> 2, c = tid & 3;
    const int qi = q0 + r;  // query position of this thread's row
    const float scale = 1.0f / sqrtf((float)head_dim);

    const T* qb = q + (long long)start * q_stride + (long long)h * head_dim;
    const T* kb = k + (long long)start * k_stride + (long long)g * head_dim;
    const T* vb = v + (long long)start * v_stride + (long long)g * head_dim;
    load_rows_f32<T, DM>(Qs, LD, AF_BQ, qb, q_stride, q0, len, head_dim);

    float acc[NE];
#pragma unroll
    for (int e = 0; e < NE; ++e) acc[e] = 0.0f;
    float m = neg_inf_f(), l = 0.0f;

    const int kend = min(q0 + AF_BQ, len);
    for (int k0 = 0; k0 < kend; k0 += AF_BK) {
        __syncthreads();  // previous tile fully consumed (and Qs written on the first pass)
        load_rows_f32<T, DM>(Ks, LD, AF_BK, kb, k_stride, k0, len, head_dim);
        load_rows_f32<T, DM>(Vs, LD, AF_BK, vb, v_stride, k0, len, head_dim);
        __syncthreads();

        float s[NJ];
        tile_scores<DM, NJ>(s, Qs + r * LD, Ks, LD, c);
        float mt = neg_inf_f();
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
            const int j = k0 + c + 4 * jj;
            s[jj] = (j <= qi && j < len) ? s[jj] * scale : neg_inf_f();
            mt = fmaxf(mt, s[jj]);
        }
        mt = fmaxf(mt, __shfl_xor_sync(ARBOR_FULL_MASK, mt, 1));
        mt = fmaxf(mt, __shfl_xor_sync(ARBOR_FULL_MASK, mt, 2));
        const float mn = fmaxf(m, mt);
        const float corr = (m == neg_inf_f()) ? 0.0f : expf(m - mn);
        l *= corr;
#pragma unroll
        for (int e = 0; e < NE; ++e) acc[e] *= corr;
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
            s[jj] = (s[jj] == neg_inf_f()) ? 0.0f : expf(s[jj] - mn);
            l += s[jj];
        }
        m = mn;
        // O += P V: the 4 threads of a row exchange their probabilities by shuffles.
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) {
                const float p = __shfl_sync(ARBOR_FULL_MASK, s[jj], (lane & ~3) | cc);
                const float* vr = Vs + (cc + 4 * jj) * LD + c;
#pragma unroll
                for (int e = 0; e < NE; ++e) acc[e] += p * vr[4 * e];
            }
        }
    }
    l += __shfl_xor_sync(ARBOR_FULL_MASK, l, 1);
    l += __shfl_xor_sync(ARBOR_FULL_MASK, l, 2);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    if (c == 0 && qi < len) lse[(long long)(start + qi) * num_heads + h] = m + logf(l);
    __syncthreads();
#pragma unroll
    for (int e = 0; e < NE; ++e) Qs[r * LD + c + 4 * e] = acc[e] * inv;
    __syncthreads();
    T* ob = out + (long long)start * out_stride + (long long)h * head_dim;
    for (int idx = tid; idx < AF_BQ * DM; idx += blockDim.x) {
        const int rr = idx / DM, d = idx - (idx / DM) * DM;
        if (q0 + rr < len && d < head_dim) store_f(ob + (long long)(q0 + rr) * out_stride + d, Qs[rr * LD + d]);
    }
}

extern "C" __global__ void __launch_bounds__(256)
    attn_fwd_32_f32(float* out, int out_stride, float* lse, const float* q, int q_stride, const float* k,
        int k_stride, const float* v, int v_stride, const int* cu_seqlens, int num_heads, int kv_heads,
        int head_dim) {
    attn_fwd<float, 32>(out, out_stride, lse, q, q_stride, k, k_stride, v, v_stride, cu_seqlens, num_heads,
                        kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_fwd_64_f32(float* out, int out_stride, float* lse, const float* q, int q_stride, const float* k,
        int k_stride, const float* v, int v_stride, const int* cu_seqlens, int num_heads, int kv_heads,
        int head_dim) {
    attn_fwd<float, 64>(out, out_stride, lse, q, q_stride, k, k_stride, v, v_stride, cu_seqlens, num_heads,
                        kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_fwd_128_f32(float* out, int out_stride, float* lse, const float* q, int q_stride, const float* k,
        int k_stride, const float* v, int v_stride, const int* cu_seqlens, int num_heads, int kv_heads,
        int head_dim) {
    attn_fwd<float, 128>(out, out_stride, lse, q, q_stride, k, k_stride, v, v_stride, cu_seqlens, num_heads,
                        kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_fwd_32_bf16(unsigned short* out, int out_stride, float* lse, const unsigned short* q, int q_stride, const unsigned short* k,
        int k_stride, const unsigned short* v, int v_stride, const int* cu_seqlens, int num_heads, int kv_heads,
        int head_dim) {
    attn_fwd<unsigned short, 32>(out, out_stride, lse, q, q_stride, k, k_stride, v, v_stride, cu_seqlens, num_heads,
                        kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_fwd_64_bf16(unsigned short* out, int out_stride, float* lse, const unsigned short* q, int q_stride, const unsigned short* k,
        int k_stride, const unsigned short* v, int v_stride, const int* cu_seqlens, int num_heads, int kv_heads,
        int head_dim) {
    attn_fwd<unsigned short, 64>(out, out_stride, lse, q, q_stride, k, k_stride, v, v_stride, cu_seqlens, num_heads,
                        kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_fwd_128_bf16(unsigned short* out, int out_stride, float* lse, const unsigned short* q, int q_stride, const unsigned short* k,
        int k_stride, const unsigned short* v, int v_stride, const int* cu_seqlens, int num_heads, int kv_heads,
        int head_dim) {
    attn_fwd<unsigned short, 128>(out, out_stride, lse, q, q_stride, k, k_stride, v, v_stride, cu_seqlens, num_heads,
                        kv_heads, head_dim);
}
