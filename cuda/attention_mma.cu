// Causal GQA attention forward on the tensor cores: bf16 products (mma.sync m16n8k16, sm_80 and
// later), f32 accumulation, online softmax in f32. The attention of `[train] dtype = "bf16"`; the
// f32 reference is attention_fwd.cu (CPU: src/attention/cpu.rs attention_forward).
//
// ABI. Entries attn_fwd_mma_64 / attn_fwd_mma_128 (DM = the largest head_dim; any 1 <= head_dim
// <= DM works, dims past head_dim are zero padded): the arguments, layouts and results of
// attention_fwd.cu's attn_fwd_DM_f32, with f32 q, k, v, out and lse:
//
//   (float* out, int out_stride, float* lse, const float* q, int q_stride, const float* k,
//    int k_stride, const float* v, int v_stride, const int* cu_seqlens, int num_heads, int kv_heads,
//    int head_dim)
//
//   q, k and v are rounded to bf16 (round to nearest even) as they enter shared memory; the
//   probabilities P are rounded to bf16 for the P·V product, while the row sums l and the
//   log-sum-exp use the f32 probabilities (as FlashAttention does).
//   lse[t * num_heads + h] = log sum_j exp(scale * q_t . k_j) of the rounded q, k.
//
//   Launch: grid = (ceil(max_seq_len / 64), num_heads, n_seq), block = 128 (MUST be 128: four
//   warps of 16 query rows each), dynamic shared memory = 3 * 64 * (DM + 8) * 2 bytes:
//       DM = 64: 27648 B,  DM = 128: 52224 B (the host raises the limit above 48 KiB).
//
// Fragments (PTX ISA, mma.m16n8k16 with .bf16): lane = 4 * gr + tg (gr = lane >> 2, tg = lane & 3).
//   A (16 x 16, row major), four 32-bit registers of two bf16 each (the lower column in the low half):
//     a[0] = (row gr,     cols 2tg, 2tg+1)   a[1] = (row gr + 8, cols 2tg, 2tg+1)
//     a[2] = (row gr,     cols 2tg+8, +9)    a[3] = (row gr + 8, cols 2tg+8, +9)
//   B (16 x 8, k x n): b[0] = (k 2tg, 2tg+1; n gr)   b[1] = (k 2tg+8, 2tg+9; n gr)
//   C/D (16 x 8 f32): c[0], c[1] = (row gr, cols 2tg, 2tg+1); c[2], c[3] = (row gr + 8, same cols).
// S = Q·Kᵀ takes A from the warp's 16 query rows and B from K's rows (k = head dim, n = key); the
// C fragments of two neighbouring key tiles of S are, element for element, the A fragment of P for
// 16 keys, so P never leaves registers; P·V takes B from V (k = key, n = head dim).

#define AM_BQ 64
#define AM_BK 64

extern __shared__ __align__(16) unsigned char am_smem[];

// Two floats as one register of two bf16, `lo` in the low half.
__device__ __forceinline__ unsigned int pack_bf16(float lo, float hi) {
    return (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
}

// d (16 x 8 f32) += a (16 x 16 bf16) * b (16 x 8 bf16), one warp.
__device__ __forceinline__ void mma_16816(float* d, const unsigned int* a, const unsigned int* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Rows [r0, r0 + rows) of x (row stride `stride`), rounded to bf16 into S ([rows][lds]); rows past
// `len` and dims past `head_dim` are written as zeros.
template <int DM>
__device__ void load_rows_bf16(unsigned short* S, int lds, int rows, const float* __restrict__ x, int stride,
                               int r0, int len, int head_dim) {
    for (int idx = threadIdx.x; idx < rows * DM; idx += blockDim.x) {
        const int r = idx / DM, d = idx - (idx / DM) * DM;
        float val = 0.0f;
        if (r0 + r < len && d < head_dim) val = x[(long long)(r0 + r) * stride + d];
        S[r * lds + d] = f32_to_bf16(val);
    }
}

template <int DM>
__device__ void attn_fwd_mma(float* __restrict__ out, int out_stride, float* __restrict__ lse,
                             const float* __restrict__ q, int q_stride, const float* __restrict__ k, int k_stride,
                             const float* __restrict__ v, int v_stride, const int* __restrict__ cu_seqlens,
                             int num_heads, int kv_heads, int head_dim) {
    constexpr int LDS = DM + 8;     // row stride in bf16 (16 bytes of padding against bank conflicts)
    constexpr int NT = AM_BK / 8;   // key tiles of 8 in a key block
    constexpr int KD = DM / 16;     // 16-wide steps over the head dims
    constexpr int NO = DM / 8;      // output tiles of 8 dims
    unsigned short* Qs = (unsigned short*)am_smem;
    unsigned short* Ks = Qs + AM_BQ * LDS;
    unsigned short* Vs = Ks + AM_BK * LDS;

    const int seq = blockIdx.z, h = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int q0 = blockIdx.x * AM_BQ;
    if (q0 >= len) return;
    const int g = h / (num_heads / kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
    const float sl2 = 1.4426950408889634f / sqrtf((float)head_dim);  // scale * log2(e)

    const float* qb = q + (long long)start * q_stride + (long long)h * head_dim;
    const float* kb = k + (long long)start * k_stride + (long long)g * head_dim;
    const float* vb = v + (long long)start * v_stride + (long long)g * head_dim;
    load_rows_bf16<DM>(Qs, LDS, AM_BQ, qb, q_stride, q0, len, head_dim);
    __syncthreads();

    // The warp's Q rows as A fragments, one per 16 head dims.
    const int wr = warp * 16;
    unsigned int qa[KD][4];
#pragma unroll
    for (int kd = 0; kd < KD; ++kd) {
        const unsigned short* p0 = Qs + (wr + gr) * LDS + kd * 16 + 2 * tg;
        const unsigned short* p1 = p0 + 8 * LDS;
        qa[kd][0] = *(const unsigned int*)p0;
        qa[kd][1] = *(const unsigned int*)p1;
        qa[kd][2] = *(const unsigned int*)(p0 + 8);
        qa[kd][3] = *(const unsigned int*)(p1 + 8);
    }
    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    // rows gr and gr + 8 of the warp: running max (base-2 units) and this thread's share of the sum
    float m0 = neg_inf_f(), m1 = neg_inf_f(), l0 = 0.0f, l1 = 0.0f;
    const int i0 = q0 + wr + gr, i1 = i0 + 8;

    const int kend = min(q0 + AM_BQ, len);
    for (int k0 = 0; k0 < kend; k0 += AM_BK) {
        __syncthreads();  // the previous key block is consumed
        load_rows_bf16<DM>(Ks, LDS, AM_BK, kb, k_stride, k0, len, head_dim);
        load_rows_bf16<DM>(Vs, LDS, AM_BK, vb, v_stride, k0, len, head_dim);
        __syncthreads();

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kd = 0; kd < KD; ++kd) {
                const unsigned short* kp = Ks + (nt * 8 + gr) * LDS + kd * 16 + 2 * tg;
                unsigned int b[2] = {*(const unsigned int*)kp, *(const unsigned int*)(kp + 8)};
                mma_16816(s[nt], qa[kd], b);
            }
        }
        // causal and length mask, scale to base 2, the block's row maxima
        float mx0 = neg_inf_f(), mx1 = neg_inf_f();
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = k0 + nt * 8 + 2 * tg + (e & 1);
                const int i = e < 2 ? i0 : i1;
                const float x = (j <= i && j < len) ? s[nt][e] * sl2 : neg_inf_f();
                s[nt][e] = x;
                if (e < 2) mx0 = fmaxf(mx0, x);
                else mx1 = fmaxf(mx1, x);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(ARBOR_FULL_MASK, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(ARBOR_FULL_MASK, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(ARBOR_FULL_MASK, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(ARBOR_FULL_MASK, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        // a row with no key yet keeps max -inf: nothing to rescale
        const float c0 = mn0 == neg_inf_f() ? 1.0f : exp2f(m0 - mn0);
        const float c1 = mn1 == neg_inf_f() ? 1.0f : exp2f(m1 - mn1);
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int n = 0; n < NO; ++n) {
            o[n][0] *= c0;
            o[n][1] *= c0;
            o[n][2] *= c1;
            o[n][3] *= c1;
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float mn = e < 2 ? mn0 : mn1;
                const float p = s[nt][e] == neg_inf_f() ? 0.0f : exp2f(s[nt][e] - mn);
                s[nt][e] = p;
                if (e < 2) l0 += p;
                else l1 += p;
            }
        }
        m0 = mn0;
        m1 = mn1;
        // O += P V, 16 keys per step: P's A fragment is two key tiles of S's C fragments
#pragma unroll
        for (int kk = 0; kk < AM_BK / 16; ++kk) {
            const unsigned int a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                       pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                       pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            const unsigned short* vp = Vs + (kk * 16 + 2 * tg) * LDS + gr;
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                const unsigned short* c = vp + n * 8;
                const unsigned int b[2] = {(unsigned int)c[0] | ((unsigned int)c[LDS] << 16),
                                           (unsigned int)c[8 * LDS] | ((unsigned int)c[9 * LDS] << 16)};
                mma_16816(o[n], a, b);
            }
        }
    }
    l0 += __shfl_xor_sync(ARBOR_FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(ARBOR_FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(ARBOR_FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(ARBOR_FULL_MASK, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    const float ln2 = 0.6931471805599453f;
    if (tg == 0 && i0 < len) lse[(long long)(start + i0) * num_heads + h] = (m0 + log2f(l0)) * ln2;
    if (tg == 0 && i1 < len) lse[(long long)(start + i1) * num_heads + h] = (m1 + log2f(l1)) * ln2;
    float* ob = out + (long long)start * out_stride + (long long)h * head_dim;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
        const int d = n * 8 + 2 * tg;
        if (i0 < len) {
            float* r = ob + (long long)i0 * out_stride;
            if (d < head_dim) r[d] = o[n][0] * inv0;
            if (d + 1 < head_dim) r[d + 1] = o[n][1] * inv0;
        }
        if (i1 < len) {
            float* r = ob + (long long)i1 * out_stride;
            if (d < head_dim) r[d] = o[n][2] * inv1;
            if (d + 1 < head_dim) r[d + 1] = o[n][3] * inv1;
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    attn_fwd_mma_64(float* out, int out_stride, float* lse, const float* q, int q_stride, const float* k,
                    int k_stride, const float* v, int v_stride, const int* cu_seqlens, int num_heads,
                    int kv_heads, int head_dim) {
    attn_fwd_mma<64>(out, out_stride, lse, q, q_stride, k, k_stride, v, v_stride, cu_seqlens, num_heads, kv_heads,
                     head_dim);
}

extern "C" __global__ void __launch_bounds__(128)
    attn_fwd_mma_128(float* out, int out_stride, float* lse, const float* q, int q_stride, const float* k,
                     int k_stride, const float* v, int v_stride, const int* cu_seqlens, int num_heads,
                     int kv_heads, int head_dim) {
    attn_fwd_mma<128>(out, out_stride, lse, q, q_stride, k, k_stride, v, v_stride, cu_seqlens, num_heads, kv_heads,
                      head_dim);
}
