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
// 16 keys, so P never leaves registers; P·V takes B from V (k = key, n = head dim). Fragments come
// from shared memory through ldmatrix, four 8 x 8 matrices a load (frag_a, frag_bt2, frag_b2).

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

// Fragments from a row-major bf16 matrix S in shared memory (row stride lds, a multiple of 8
// elements, so every 8-element row segment is 16-byte aligned), loaded with ldmatrix: four 8 x 8
// matrices per instruction, lanes 8i .. 8i + 7 giving the row addresses of matrix i (lane l: row
// l % 8 of matrix l / 8). Without .trans, lane l receives in register i the elements (row l / 4,
// columns 2 (l % 4), + 1) of matrix i, the lower column in the low half: exactly the mma fragment
// element (gr, 2 tg); with .trans it receives (rows 2 (l % 4), + 1; column l / 4).
__device__ __forceinline__ void ldsm_x4(unsigned int* r, const unsigned short* row) {
    const unsigned int at = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned int* r, const unsigned short* row) {
    const unsigned int at = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
}

// The A fragment of S's 16 x 16 block at (r0, c0): matrices (r0, c0), (r0 + 8, c0), (r0, c0 + 8),
// (r0 + 8, c0 + 8) are a[0] .. a[3].
__device__ __forceinline__ void frag_a(unsigned int* a, const unsigned short* S, int lds, int r0, int c0, int lane) {
    const int i = lane >> 3;
    ldsm_x4(a, S + (r0 + (lane & 7) + (i & 1) * 8) * lds + c0 + (i >> 1) * 8);
}

// The B fragments (k x n = 16 x 8) of two key tiles that are the transposes of S's 8 x 16 blocks
// at (n0, c0) and (n0 + 8, c0): column n of B is row n0 + n of S (S·Xᵀ products: K for Q·Kᵀ).
// b[0], b[1] belong to tile n0 and b[2], b[3] to tile n0 + 8: matrices (n0, c0), (n0, c0 + 8),
// (n0 + 8, c0), (n0 + 8, c0 + 8).
__device__ __forceinline__ void frag_bt2(unsigned int* b, const unsigned short* S, int lds, int n0, int c0,
                                         int lane) {
    const int i = lane >> 3;
    ldsm_x4(b, S + (n0 + (lane & 7) + (i >> 1) * 8) * lds + c0 + (i & 1) * 8);
}

// The B fragments of S's 16 x 8 blocks at (k0, n0) and (k0, n0 + 8) as they stand (P·V
// products: V), b[0], b[1] the first: matrices (k0, n0), (k0 + 8, n0), (k0, n0 + 8), (k0 + 8,
// n0 + 8), transposed as they load.
__device__ __forceinline__ void frag_b2(unsigned int* b, const unsigned short* S, int lds, int k0, int n0,
                                        int lane) {
    const int i = lane >> 3;
    ldsm_x4_trans(b, S + (k0 + (lane & 7) + (i & 1) * 8) * lds + n0 + (i >> 1) * 8);
}

// The A fragment of 16 columns held as two C fragments (columns 0..7 in lo, 8..15 in hi).
__device__ __forceinline__ void c_to_a(unsigned int* a, const float* lo, const float* hi) {
    a[0] = pack_bf16(lo[0], lo[1]);
    a[1] = pack_bf16(lo[2], lo[3]);
    a[2] = pack_bf16(hi[0], hi[1]);
    a[3] = pack_bf16(hi[2], hi[3]);
}

// s[nt] = the warp's rows [r0, r0 + 16) of X1 times the transposed rows [8 nt, 8 nt + 8) of Y1,
// over the DM head dims, for NT tiles; t[nt] the same of X2 and Y2 (the backward's pair S = Q·Kᵀ,
// dP = dO·Vᵀ, or Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ).
template <int DM, int NT>
__device__ __forceinline__ void row_products2(float (*s)[4], float (*t)[4], const unsigned short* X1,
                                              const unsigned short* Y1, const unsigned short* X2,
                                              const unsigned short* Y2, int lds, int r0, int lane) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = t[nt][e] = 0.0f;
    }
#pragma unroll
    for (int kd = 0; kd < DM / 16; ++kd) {
        unsigned int a1[4], a2[4];
        frag_a(a1, X1, lds, r0, kd * 16, lane);
        frag_a(a2, X2, lds, r0, kd * 16, lane);
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            unsigned int b[4];
            frag_bt2(b, Y1, lds, nt * 8, kd * 16, lane);
            mma_16816(s[nt], a1, b);
            mma_16816(s[nt + 1], a1, b + 2);
            frag_bt2(b, Y2, lds, nt * 8, kd * 16, lane);
            mma_16816(t[nt], a2, b);
            mma_16816(t[nt + 1], a2, b + 2);
        }
    }
}

// acc[n] += C · Y[:, 8 n .. 8 n + 8), where C (16 x 8 NT) is held as NT C fragments (P, dS or their
// transposes) and Y is 8 NT rows of bf16 in shared memory.
template <int NO, int NT>
__device__ __forceinline__ void accumulate_product(float (*acc)[4], float (*c)[4], const unsigned short* Y, int lds,
                                                   int lane) {
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
        unsigned int a[4];
        c_to_a(a, c[2 * kk], c[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < NO; n += 2) {
            unsigned int b[4];
            frag_b2(b, Y, lds, kk * 16, n * 8, lane);
            mma_16816(acc[n], a, b);
            mma_16816(acc[n + 1], a, b + 2);
        }
    }
}

// Rows [r0, r0 + rows) of x (row stride `stride`), rounded to bf16 into S ([rows][lds]); rows past
// `len` and dims past `head_dim` are written as zeros. When head_dim and the stride are multiples
// of 4 (and so, the buffers coming from the allocator, every row start is 16-byte aligned), four
// dims move per 16-byte load and 8-byte store.
template <int DM>
__device__ void load_rows_bf16(unsigned short* S, int lds, int rows, const float* __restrict__ x, int stride,
                               int r0, int len, int head_dim) {
    if ((head_dim & 3) == 0 && (stride & 3) == 0 && (((unsigned long long)x) & 15) == 0) {
        constexpr int D4 = DM / 4;
        for (int idx = threadIdx.x; idx < rows * D4; idx += blockDim.x) {
            const int r = idx / D4, d = 4 * (idx - (idx / D4) * D4);
            float4 val = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (r0 + r < len && d < head_dim) val = *(const float4*)(x + (long long)(r0 + r) * stride + d);
            const unsigned int lo = pack_bf16(val.x, val.y), hi = pack_bf16(val.z, val.w);
            *(uint2*)(S + r * lds + d) = make_uint2(lo, hi);
        }
        return;
    }
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
    // the longest query blocks (the causal mask's last) start first, so they do not make the tail
    const int q0 = (gridDim.x - 1 - blockIdx.x) * AM_BQ;
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
    for (int kd = 0; kd < KD; ++kd) frag_a(qa[kd], Qs, LDS, wr, kd * 16, lane);
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
        for (int nt = 0; nt < NT; nt += 2) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            s[nt + 1][0] = s[nt + 1][1] = s[nt + 1][2] = s[nt + 1][3] = 0.0f;
#pragma unroll
            for (int kd = 0; kd < KD; ++kd) {
                unsigned int b[4];
                frag_bt2(b, Ks, LDS, nt * 8, kd * 16, lane);
                mma_16816(s[nt], qa[kd], b);
                mma_16816(s[nt + 1], qa[kd], b + 2);
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
        accumulate_product<NO, NT>(o, s, Vs, LDS, lane);
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

// ---------------------------------------------------------------------------------------------
// Backward on the tensor cores (bf16 products, f32 accumulation), deterministic (no atomics).
//
// ABI. The arguments, layouts and results of attention_bwd.cu's attn_bwd_dq_DM_f32 and
// attn_bwd_dkdv_DM_f32 (run attn_bwd_delta_f32 first; f32 q, k, v, dout, lse, delta; dq, dk, dv
// OVERWRITTEN with their own row strides), entries DM = 64 and 128:
//
// attn_bwd_dq_mma_{64,128}
//   (float* dq, int dq_stride, const float* q, int q_stride, const float* k, int k_stride,
//    const float* v, int v_stride, const float* dout, int dout_stride, const float* lse,
//    const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim)
//   Block = 64 query rows of one head of one sequence (16 per warp); loops over key blocks of 64
//   up to the diagonal: S = Q·Kᵀ and dP = dO·Vᵀ on the tensor cores, P = exp(scale S - lse),
//   dS = P (dP - delta) in registers, dQ += dS·K (dS's C fragments are its A fragments).
//   Launch: grid = (ceil(max_seq_len / 64), num_heads, n_seq), block = 128,
//   dynamic shared memory = 4 * 64 * (DM + 8) * 2 bytes (DM 64: 36864, 128: 69632).
//
// attn_bwd_dkdv_mma_{64,128}
//   (float* dk, int dk_stride, float* dv, int dv_stride, const float* q, int q_stride,
//    const float* k, int k_stride, const float* v, int v_stride, const float* dout,
//    int dout_stride, const float* lse, const float* delta, const int* cu_seqlens, int num_heads,
//    int kv_heads, int head_dim, int heads_per_block)
//   Block = 64 keys of one sequence (16 per warp) against `heads_per_block` consecutive query heads
//   of one kv group, the block's y index times heads_per_block being the first; loops over those
//   heads and over query blocks of 64 from the diagonal to the end: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ,
//   Pᵀ and dSᵀ in registers, dV += Pᵀ·dO and dK += dSᵀ·Q. The block writes its sums at column
//   y * head_dim of dk and dv:
//   - heads_per_block = num_heads / kv_heads (the whole group): y is the kv head and dk, dv are
//     the gradients themselves; grid = (ceil(max_seq_len / 64), kv_heads, n_seq).
//   - heads_per_block = 1: y is the query head and dk, dv are per-head partials ([N, num_heads,
//     head_dim] each, row stride num_heads * head_dim), which attn_bwd_group_sum_f32 then sums over
//     each group in head order; grid = (ceil(max_seq_len / 64), num_heads, n_seq). A group's
//     query blocks then run on num_heads / kv_heads blocks in parallel instead of one after
//     another in one block (7 for Qwen2-0.5B), still with no atomics.
//   Launch: block = 128, dynamic shared memory = 4 * 64 * (DM + 8) * 2 + 2 * 64 * 4 bytes
//   (DM 64: 37376, 128: 70144).

template <int DM>
__device__ void attn_bwd_dq_mma(float* __restrict__ dq, int dq_stride, const float* __restrict__ q, int q_stride,
                                const float* __restrict__ k, int k_stride, const float* __restrict__ v, int v_stride,
                                const float* __restrict__ dout, int dout_stride, const float* __restrict__ lse,
                                const float* __restrict__ delta, const int* __restrict__ cu_seqlens, int num_heads,
                                int kv_heads, int head_dim) {
    constexpr int LDS = DM + 8, NT = AM_BK / 8, NO = DM / 8;
    unsigned short* Qs = (unsigned short*)am_smem;
    unsigned short* Os = Qs + AM_BQ * LDS;
    unsigned short* Ks = Os + AM_BQ * LDS;
    unsigned short* Vs = Ks + AM_BK * LDS;

    const int seq = blockIdx.z, h = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    // the longest query blocks (the causal mask's last) start first, so they do not make the tail
    const int q0 = (gridDim.x - 1 - blockIdx.x) * AM_BQ;
    if (q0 >= len) return;
    const int g = h / (num_heads / kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
    const float scale = 1.0f / sqrtf((float)head_dim), log2e = 1.4426950408889634f, sl2 = scale * log2e;

    load_rows_bf16<DM>(Qs, LDS, AM_BQ, q + (long long)start * q_stride + (long long)h * head_dim, q_stride, q0, len,
                       head_dim);
    load_rows_bf16<DM>(Os, LDS, AM_BQ, dout + (long long)start * dout_stride + (long long)h * head_dim, dout_stride,
                       q0, len, head_dim);
    const float* kb = k + (long long)start * k_stride + (long long)g * head_dim;
    const float* vb = v + (long long)start * v_stride + (long long)g * head_dim;
    const int wr = warp * 16;
    const int i0 = q0 + wr + gr, i1 = i0 + 8;
    const float L0 = i0 < len ? lse[(long long)(start + i0) * num_heads + h] * log2e : 0.0f;
    const float L1 = i1 < len ? lse[(long long)(start + i1) * num_heads + h] * log2e : 0.0f;
    const float D0 = i0 < len ? delta[(long long)(start + i0) * num_heads + h] : 0.0f;
    const float D1 = i1 < len ? delta[(long long)(start + i1) * num_heads + h] : 0.0f;

    float acc[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const int kend = min(q0 + AM_BQ, len);
    for (int k0 = 0; k0 < kend; k0 += AM_BK) {
        __syncthreads();  // the previous key block is consumed (and Qs, Os written on the first pass)
        load_rows_bf16<DM>(Ks, LDS, AM_BK, kb, k_stride, k0, len, head_dim);
        load_rows_bf16<DM>(Vs, LDS, AM_BK, vb, v_stride, k0, len, head_dim);
        __syncthreads();
        float s[NT][4], dp[NT][4];
        row_products2<DM, NT>(s, dp, Qs, Ks, Os, Vs, LDS, wr, lane);
        // dS = P (dP - delta), with P recomputed from the forward's lse (0 where masked)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = k0 + nt * 8 + 2 * tg + (e & 1);
                const int i = e < 2 ? i0 : i1;
                const float p = (j <= i && i < len) ? exp2f(s[nt][e] * sl2 - (e < 2 ? L0 : L1)) : 0.0f;
                s[nt][e] = p * (dp[nt][e] - (e < 2 ? D0 : D1));
            }
        }
        // dQ += dS K
        accumulate_product<NO, NT>(acc, s, Ks, LDS, lane);
    }
    float* db = dq + (long long)start * dq_stride + (long long)h * head_dim;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
        const int d = n * 8 + 2 * tg;
        if (i0 < len) {
            float* r = db + (long long)i0 * dq_stride;
            if (d < head_dim) r[d] = acc[n][0] * scale;
            if (d + 1 < head_dim) r[d + 1] = acc[n][1] * scale;
        }
        if (i1 < len) {
            float* r = db + (long long)i1 * dq_stride;
            if (d < head_dim) r[d] = acc[n][2] * scale;
            if (d + 1 < head_dim) r[d + 1] = acc[n][3] * scale;
        }
    }
}

template <int DM>
__device__ void attn_bwd_dkdv_mma(float* __restrict__ dk, int dk_stride, float* __restrict__ dv, int dv_stride,
                                  const float* __restrict__ q, int q_stride, const float* __restrict__ k, int k_stride,
                                  const float* __restrict__ v, int v_stride, const float* __restrict__ dout,
                                  int dout_stride, const float* __restrict__ lse, const float* __restrict__ delta,
                                  const int* __restrict__ cu_seqlens, int num_heads, int kv_heads, int head_dim,
                                  int heads_per_block) {
    constexpr int LDS = DM + 8, NT = AM_BQ / 8, NO = DM / 8;
    unsigned short* Ks = (unsigned short*)am_smem;
    unsigned short* Vs = Ks + AM_BK * LDS;
    unsigned short* Qs = Vs + AM_BK * LDS;
    unsigned short* Os = Qs + AM_BQ * LDS;
    float* Ls = (float*)(Os + AM_BQ * LDS);  // the query block's lse (base 2) and delta
    float* Ds = Ls + AM_BQ;

    const int seq = blockIdx.z, y = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int k0 = blockIdx.x * AM_BK;
    if (k0 >= len) return;
    const int h_first = y * heads_per_block, g = h_first / (num_heads / kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
    const float scale = 1.0f / sqrtf((float)head_dim), log2e = 1.4426950408889634f, sl2 = scale * log2e;

    load_rows_bf16<DM>(Ks, LDS, AM_BK, k + (long long)start * k_stride + (long long)g * head_dim, k_stride, k0, len,
                       head_dim);
    load_rows_bf16<DM>(Vs, LDS, AM_BK, v + (long long)start * v_stride + (long long)g * head_dim, v_stride, k0, len,
                       head_dim);
    const int wr = warp * 16;
    const int j0 = k0 + wr + gr, j1 = j0 + 8;  // this lane's key rows
    float dka[NO][4], dva[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = dva[n][0] = dva[n][1] = dva[n][2] =
        dva[n][3] = 0.0f;
    for (int h = h_first; h < h_first + heads_per_block; ++h) {
        const float* qb = q + (long long)start * q_stride + (long long)h * head_dim;
        const float* ob = dout + (long long)start * dout_stride + (long long)h * head_dim;
        for (int q0 = k0; q0 < len; q0 += AM_BQ) {
            __syncthreads();  // the previous query block is consumed (and Ks, Vs written on the first pass)
            load_rows_bf16<DM>(Qs, LDS, AM_BQ, qb, q_stride, q0, len, head_dim);
            load_rows_bf16<DM>(Os, LDS, AM_BQ, ob, dout_stride, q0, len, head_dim);
            if (threadIdx.x < AM_BQ) {
                const int i = q0 + threadIdx.x;
                const long long at = (long long)(start + i) * num_heads + h;
                Ls[threadIdx.x] = i < len ? lse[at] * log2e : 0.0f;
                Ds[threadIdx.x] = i < len ? delta[at] : 0.0f;
            }
            __syncthreads();
            float st[NT][4], dpt[NT][4];
            row_products2<DM, NT>(st, dpt, Ks, Qs, Vs, Os, LDS, wr, lane);
            // Pᵀ and dSᵀ = Pᵀ (dPᵀ - delta): rows are keys, columns queries
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int c = nt * 8 + 2 * tg + (e & 1);
                    const int i = q0 + c;
                    const int j = e < 2 ? j0 : j1;
                    const float p = (j <= i && i < len) ? exp2f(st[nt][e] * sl2 - Ls[c]) : 0.0f;
                    st[nt][e] = p;
                    dpt[nt][e] = p * (dpt[nt][e] - Ds[c]);
                }
            }
            // dV += Pᵀ dO, dK += dSᵀ Q
            accumulate_product<NO, NT>(dva, st, Os, LDS, lane);
            accumulate_product<NO, NT>(dka, dpt, Qs, LDS, lane);
        }
    }
    float* dkb = dk + (long long)start * dk_stride + (long long)y * head_dim;
    float* dvb = dv + (long long)start * dv_stride + (long long)y * head_dim;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
        const int d = n * 8 + 2 * tg;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int j = half ? j1 : j0;
            if (j >= len) continue;
            float* rk = dkb + (long long)j * dk_stride;
            float* rv = dvb + (long long)j * dv_stride;
            if (d < head_dim) {
                rk[d] = dka[n][2 * half] * scale;
                rv[d] = dva[n][2 * half];
            }
            if (d + 1 < head_dim) {
                rk[d + 1] = dka[n][2 * half + 1] * scale;
                rv[d + 1] = dva[n][2 * half + 1];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dq_mma_64(float* dq, int dq_stride, const float* q, int q_stride, const float* k, int k_stride,
                        const float* v, int v_stride, const float* dout, int dout_stride, const float* lse,
                        const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    attn_bwd_dq_mma<64>(dq, dq_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride, lse, delta,
                         cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dkdv_mma_64(float* dk, int dk_stride, float* dv, int dv_stride, const float* q, int q_stride,
                          const float* k, int k_stride, const float* v, int v_stride, const float* dout,
                          int dout_stride, const float* lse, const float* delta, const int* cu_seqlens,
                          int num_heads, int kv_heads, int head_dim, int heads_per_block) {
    attn_bwd_dkdv_mma<64>(dk, dk_stride, dv, dv_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride,
                           lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block);
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dq_mma_128(float* dq, int dq_stride, const float* q, int q_stride, const float* k, int k_stride,
                        const float* v, int v_stride, const float* dout, int dout_stride, const float* lse,
                        const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    attn_bwd_dq_mma<128>(dq, dq_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride, lse, delta,
                         cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dkdv_mma_128(float* dk, int dk_stride, float* dv, int dv_stride, const float* q, int q_stride,
                          const float* k, int k_stride, const float* v, int v_stride, const float* dout,
                          int dout_stride, const float* lse, const float* delta, const int* cu_seqlens,
                          int num_heads, int kv_heads, int head_dim, int heads_per_block) {
    attn_bwd_dkdv_mma<128>(dk, dk_stride, dv, dv_stride, q, q_stride, k, k_stride, v, v_stride, dout, dout_stride,
                           lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block);
}

// dk[t, g, :] = sum over hh = 0 .. group - 1 of pk[t, g * group + hh, :] in that order (and dv of
// pv): the per-query-head partials of attn_bwd_dkdv_mma_DM with heads_per_block = 1 summed into
// each kv head's gradient; pk and pv are [n, num_heads, head_dim], dk and dv rows of stride
// dk_stride / dv_stride. Any grid of 1-D blocks (grid-stride over n * kv_heads * head_dim).
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
