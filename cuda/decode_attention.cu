// Single-query attention for incremental decoding against a KV cache
// (CPU: src/model/decode.rs KvCache::store / attend_row).
//
// GPU cache layout (differs from the CPU's transposed 8-position key blocks, which only serve
// AVX2): for each layer, two buffers
//   k_cache, v_cache: [slots, KV, max_len, D] storage T, row-major: position p of kv head g of
//   slot s is the D contiguous elements at ((s * KV + g) * max_len + p) * D.
// Positions 0..len-1 of a slot must hold the post-RoPE keys and the values of its tokens.
//
// ABI (T = float for _f32, unsigned short (bf16) for _bf16):
//
// decode_qkv_store_f32 / decode_qkv_store_f32_bf16 (at the end of the file) add the q|k|v bias,
//   rotate q and k, and store the keys and values of a step's rows in the cache: run it before
//   decode_attn.
//
// decode_attn_f32 / decode_attn_bf16
//   (T* out, int out_stride, const T* q, int q_stride, const T* k_cache, const T* v_cache,
//    const int* slots, const int* lens, int num_heads, int kv_heads, int head_dim, int max_len)
//   q: [B, q_stride] T, head h of row i at columns [h*D, (h+1)*D) (so q can be read straight out
//   of the packed q|k|v rows: q_stride = (H + 2KV) * D); out: [B, out_stride] T, head h of row i at
//   columns [h*D, (h+1)*D); slots: [B] cache slot of row i; lens: [B] number of cached positions
//   row i attends to (its own position + 1, the current token already stored; 1 <= len <= max_len).
//   For query head h of row i, kv head g = h / (H / KV), scale = 1 / sqrt(D):
//     out = softmax_j(scale * q . K[j]) V[j] over j < lens[i]
//   Online softmax (running max and sum) per warp, warps merged at the end.
//   head_dim: any value with 1 <= D <= 256 (each lane owns dims lane, lane + 32, ...).
//   Launch: grid = (num_heads, B), block = 128 (MUST be 128: 4 warps; warp w takes positions
//   j = w, w + 4, ...), no dynamic shared memory (static: 4 * 258 floats).

// decode_attn_gqa_{64,128}_f32 / _f32_bf16 (below): decode_attn_f32 / _f32_bf16 with one block per
//   kv head and row for the whole GQA group (each cached key and value read once per group).
//
// decode_attn_f32_bf16: the same with f32 rows (q, out) and a bf16 cache (k_cache, v_cache:
//   unsigned short), whose keys and values decode_qkv_store_f32_bf16 rounded to bf16 (nearest even)
//   and which are widened exactly as they are read (the cache of `[train] dtype = "bf16"`: half
//   the memory and half the decode attention's traffic).

#define DEC_WARPS 4
#define DEC_MAX_D 256
#define DEC_PER_LANE (DEC_MAX_D / 32)

template <typename T, typename TC, typename TO = T>
__device__ void decode_attn(TO* __restrict__ out, int out_stride, const T* __restrict__ q, int q_stride,
                            const TC* __restrict__ k_cache, const TC* __restrict__ v_cache,
                            const int* __restrict__ slots, const int* __restrict__ lens, int num_heads,
                            int kv_heads, int head_dim, int max_len) {
    __shared__ float s_acc[DEC_WARPS][DEC_MAX_D];
    __shared__ float s_m[DEC_WARPS], s_l[DEC_WARPS];
    const int h = blockIdx.x, i = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = num_heads / kv_heads;
    const int g = h / group;
    const int len = lens[i];
    const float scale = 1.0f / sqrtf((float)head_dim);
    const T* qh = q + (long long)i * q_stride + (long long)h * head_dim;
    const long long base = ((long long)slots[i] * kv_heads + g) * max_len * head_dim;
    const TC* kb = k_cache + base;
    const TC* vb = v_cache + base;

    float qr[DEC_PER_LANE], acc[DEC_PER_LANE];
#pragma unroll
    for (int e = 0; e < DEC_PER_LANE; ++e) {
        const int d = lane + 32 * e;
        qr[e] = d < head_dim ? load_f(qh + d) : 0.0f;
        acc[e] = 0.0f;
    }
    float m = neg_inf_f(), l = 0.0f;
    for (int j = warp; j < len; j += DEC_WARPS) {
        const TC* kr = kb + (long long)j * head_dim;
        float part = 0.0f;
#pragma unroll
        for (int e = 0; e < DEC_PER_LANE; ++e) {
            const int d = lane + 32 * e;
            if (d < head_dim) part += qr[e] * load_f(kr + d);
        }
        const float sc = warp_sum(part) * scale;
        const float mn = fmaxf(m, sc);
        const float corr = expf(m - mn);  // 0 on the first key (m = -inf)
        const float p = expf(sc - mn);
        l = l * corr + p;
        const TC* vr = vb + (long long)j * head_dim;
#pragma unroll
        for (int e = 0; e < DEC_PER_LANE; ++e) {
            const int d = lane + 32 * e;
            acc[e] = acc[e] * corr + (d < head_dim ? p * load_f(vr + d) : 0.0f);
        }
        m = mn;
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < DEC_PER_LANE; ++e) {
        const int d = lane + 32 * e;
        if (d < head_dim) s_acc[warp][d] = acc[e];
    }
    __syncthreads();
    float mt = neg_inf_f();
#pragma unroll
    for (int w = 0; w < DEC_WARPS; ++w) mt = fmaxf(mt, s_m[w]);
    float lt = 0.0f, f[DEC_WARPS];
#pragma unroll
    for (int w = 0; w < DEC_WARPS; ++w) {
        f[w] = s_m[w] == neg_inf_f() ? 0.0f : expf(s_m[w] - mt);
        lt += s_l[w] * f[w];
    }
    const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
    TO* oh = out + (long long)i * out_stride + (long long)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) o += s_acc[w][d] * f[w];
        store_f(oh + d, o * inv);
    }
}

extern "C" __global__ void decode_attn_f32(float* out, int out_stride, const float* q, int q_stride,
                                           const float* k_cache, const float* v_cache, const int* slots,
                                           const int* lens, int num_heads, int kv_heads, int head_dim,
                                           int max_len) {
    decode_attn<float, float>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens, num_heads, kv_heads,
                       head_dim, max_len);
}

extern "C" __global__ void decode_attn_bf16(unsigned short* out, int out_stride, const unsigned short* q,
                                            int q_stride, const unsigned short* k_cache,
                                            const unsigned short* v_cache, const int* slots, const int* lens,
                                            int num_heads, int kv_heads, int head_dim, int max_len) {
    decode_attn<unsigned short, unsigned short>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens, num_heads,
                                kv_heads, head_dim, max_len);
}

extern "C" __global__ void decode_attn_f32_bf16(float* out, int out_stride, const float* q, int q_stride,
                                                const unsigned short* k_cache, const unsigned short* v_cache,
                                                const int* slots, const int* lens, int num_heads, int kv_heads,
                                                int head_dim, int max_len) {
    decode_attn<float, unsigned short>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens, num_heads,
                                       kv_heads, head_dim, max_len);
}

// ---------------------------------------------------------------------------------------------
// decode_attn_gqa_{64,128}_f32 / decode_attn_gqa_{64,128}_f32_bf16
//   The arguments, layouts and results of decode_attn_f32 (f32 q and out rows; the cache f32, or
//   bf16 for _f32_bf16), for group = num_heads / kv_heads <= DEC_GQA_G (8) and head_dim <= DM (64
//   or 128), with one block per (kv head g, row i) for the group's query heads g * group ..
//   g * group + group - 1 together, so each key and value of the slot is read once per group
//   instead of once per query head:
//   - the block's 4 warps take chunks of 32 positions in turn (warp w: positions 32 w .., then
//     32 (w + 4) ..);
//   - scores: lane l scores position j0 + l against every head of the group (its key row read
//     once, in 16-byte loads where D is a multiple of 16 bytes' elements; the group's queries,
//     scaled by 1 / sqrt(D), from shared memory; the dims summed in order either way);
//   - the chunk's softmax statistics per head by warp reductions (running max m, sum l);
//   - values: lanes over dims (d = lane, lane + 32, ..), the chunk's positions in order, each
//     position's weight per head broadcast from its lane by a shuffle;
//   - the warps' (m, l, acc) merged as in decode_attn.
//   Two more arguments, (int split_len, float* partial), split a row's positions over gridDim.z
//   blocks (flash-decoding: few rows at long contexts would otherwise occupy a few SMs): block z
//   attends positions [z * split_len, min(len, (z + 1) * split_len)) (none past the row's length:
//   m = -inf, l = 0). With gridDim.z = 1 (split_len >= len) it writes `out` as above and `partial`
//   is not read (may be null); with gridDim.z = S > 1 it writes its unnormalised (acc [8][DM],
//   m [8], l [8]) to partial[((i * KV + g) * S + z) * (8 * DM + 16)] and decode_attn_merge_*
//   writes `out`.
//   Launch: grid = (kv_heads, B, S), block = 128 (MUST be 128), no dynamic shared memory (static:
//   DEC_GQA_G * DM * (1 + 4) + 2 * 4 * DEC_GQA_G floats: DM 64 10.5 KB, 128 20.7 KB).

#define DEC_GQA_G 8

// 16 bytes at p (16-byte aligned) widened to f32: 4 floats, or 8 bf16 values.
__device__ __forceinline__ void load16(const float* p, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}
__device__ __forceinline__ void load16(const unsigned short* p, float* out) { load8_f(p, out); }

template <typename TC, int DM, typename TO = float>
__device__ void decode_attn_gqa(TO* __restrict__ out, int out_stride, const float* __restrict__ q, int q_stride,
                                const TC* __restrict__ k_cache, const TC* __restrict__ v_cache,
                                const int* __restrict__ slots, const int* __restrict__ lens, int num_heads,
                                int kv_heads, int head_dim, int max_len, int split_len,
                                float* __restrict__ partial) {
    constexpr int G = DEC_GQA_G, DL = DM / 32;
    __shared__ float s_q[G][DM];
    __shared__ float s_acc[DEC_WARPS][G][DM];
    __shared__ float s_m[DEC_WARPS][G], s_l[DEC_WARPS][G];
    const int g = blockIdx.x, i = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = num_heads / kv_heads;
    const int len = lens[i];
    // this block's positions: split blockIdx.z of the row's
    const int begin = blockIdx.z * split_len;
    const int end = min(len, begin + split_len);
    const float scale = 1.0f / sqrtf((float)head_dim);
    const float* qg = q + (long long)i * q_stride + (long long)g * group * head_dim;
    for (int idx = threadIdx.x; idx < G * DM; idx += blockDim.x) {
        const int hh = idx / DM, d = idx - (idx / DM) * DM;
        s_q[hh][d] = (hh < group && d < head_dim) ? qg[hh * head_dim + d] * scale : 0.0f;
    }
    __syncthreads();
    const long long base = ((long long)slots[i] * kv_heads + g) * max_len * head_dim;
    const TC* kb = k_cache + base;
    const TC* vb = v_cache + base;

    float m[G], l[G], acc[G][DL];
#pragma unroll
    for (int hh = 0; hh < G; ++hh) {
        m[hh] = neg_inf_f();
        l[hh] = 0.0f;
#pragma unroll
        for (int e = 0; e < DL; ++e) acc[hh][e] = 0.0f;
    }
    for (int j0 = begin + warp * 32; j0 < end; j0 += DEC_WARPS * 32) {
        const int j = j0 + lane;
        const bool valid = j < end;
        // this lane's position scored against every head of the group
        float s[G];
#pragma unroll
        for (int hh = 0; hh < G; ++hh) s[hh] = 0.0f;
        if (valid) {
            const TC* kr = kb + (long long)j * head_dim;
            constexpr int VEC = 16 / sizeof(TC);
            if (head_dim % VEC == 0) {
                // 16-byte loads of the key row (aligned: every row starts on a multiple of VEC
                // elements), the dims summed in the same order as below
                for (int d0 = 0; d0 < head_dim; d0 += VEC) {
                    float kd[VEC];
                    load16(kr + d0, kd);
#pragma unroll
                    for (int e = 0; e < VEC; ++e)
#pragma unroll
                        for (int hh = 0; hh < G; ++hh)
                            if (hh < group) s[hh] += s_q[hh][d0 + e] * kd[e];
                }
            } else {
                for (int d = 0; d < head_dim; ++d) {
                    const float kd = load_f(kr + d);
#pragma unroll
                    for (int hh = 0; hh < G; ++hh)
                        if (hh < group) s[hh] += s_q[hh][d] * kd;
                }
            }
        }
        // the chunk's weights p = exp(s - m) per head, rescaling what came before (lane 0's
        // position is valid, so every chunk maximum is finite)
        float p[G];
#pragma unroll
        for (int hh = 0; hh < G; ++hh) {
            p[hh] = 0.0f;
            if (hh >= group) continue;  // the same for every lane
            const float sc = valid ? s[hh] : neg_inf_f();
            const float mn = fmaxf(m[hh], warp_max(sc));
            const float corr = expf(m[hh] - mn);  // 0 on the first chunk (m = -inf)
            p[hh] = valid ? expf(sc - mn) : 0.0f;
            l[hh] = l[hh] * corr + warp_sum(p[hh]);
#pragma unroll
            for (int e = 0; e < DL; ++e) acc[hh][e] *= corr;
            m[hh] = mn;
        }
        // values: lanes over dims, the chunk's positions in order
        const int nk = min(32, end - j0);
        for (int jj = 0; jj < nk; ++jj) {
            const TC* vr = vb + (long long)(j0 + jj) * head_dim;
            float v[DL];
#pragma unroll
            for (int e = 0; e < DL; ++e) {
                const int d = lane + 32 * e;
                v[e] = d < head_dim ? load_f(vr + d) : 0.0f;
            }
#pragma unroll
            for (int hh = 0; hh < G; ++hh) {
                if (hh >= group) continue;
                const float w = __shfl_sync(ARBOR_FULL_MASK, p[hh], jj);
#pragma unroll
                for (int e = 0; e < DL; ++e) acc[hh][e] += w * v[e];
            }
        }
    }
#pragma unroll
    for (int hh = 0; hh < G; ++hh) {
        if (lane == 0) {
            s_m[warp][hh] = m[hh];
            s_l[warp][hh] = l[hh];
        }
#pragma unroll
        for (int e = 0; e < DL; ++e) s_acc[warp][hh][lane + 32 * e] = acc[hh][e];
    }
    __syncthreads();
    // with several splits: this split's unnormalised (acc, m, l) per head, merged by decode_attn_merge
    float* part = partial + (((long long)i * kv_heads + g) * gridDim.z + blockIdx.z) * (G * DM + 2 * G);
    for (int idx = threadIdx.x; idx < group * head_dim; idx += blockDim.x) {
        const int hh = idx / head_dim, d = idx - (idx / head_dim) * head_dim;
        float mt = neg_inf_f();
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) mt = fmaxf(mt, s_m[w][hh]);
        float lt = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) {
            const float f = s_m[w][hh] == neg_inf_f() ? 0.0f : expf(s_m[w][hh] - mt);
            lt += s_l[w][hh] * f;
            o += s_acc[w][hh][d] * f;
        }
        if (gridDim.z == 1) {
            store_f(out + (long long)i * out_stride + (long long)(g * group + hh) * head_dim + d,
                    lt > 0.0f ? o / lt : 0.0f);
        } else {
            part[hh * DM + d] = o;
            if (d == 0) {
                part[G * DM + hh] = mt;
                part[G * DM + G + hh] = lt;
            }
        }
    }
}

// decode_attn_merge_{64,128}_f32 / _o16
//   (TO* out, int out_stride, const float* partial, int splits, int num_heads, int kv_heads, int head_dim)
//   The splits of a decode_attn_gqa launch with gridDim.z = S > 1, merged: for row i, kv head g
//   and each head hh of its group and dim d, over the splits z = 0 .. S-1 in order (the per-split
//   (acc, m, l) at partial[((i * KV + g) * S + z) * (8 * DM + 16)]: acc [8][DM], m [8], l [8]):
//     mt = max_z m_z;  f_z = m_z == -inf ? 0 : exp(m_z - mt);  out = sum_z f_z acc_z / sum_z f_z l_z
//   (0 where no position was attended), as the warps of one block are merged. S = gridDim.z of
//   the attention launch, passed as `splits`.
//   Launch: grid = (kv_heads, B), block = 128, no dynamic shared memory.

template <int DM, typename TO>
__device__ void decode_attn_merge(TO* __restrict__ out, int out_stride, const float* __restrict__ partial,
                                  int splits, int num_heads, int kv_heads, int head_dim) {
    constexpr int G = DEC_GQA_G;
    const int g = blockIdx.x, i = blockIdx.y;
    const int group = num_heads / kv_heads;
    const float* base = partial + ((long long)i * kv_heads + g) * splits * (G * DM + 2 * G);
    for (int idx = threadIdx.x; idx < group * head_dim; idx += blockDim.x) {
        const int hh = idx / head_dim, d = idx - (idx / head_dim) * head_dim;
        float mt = neg_inf_f();
        for (int z = 0; z < splits; ++z) mt = fmaxf(mt, base[z * (G * DM + 2 * G) + G * DM + hh]);
        float lt = 0.0f, o = 0.0f;
        for (int z = 0; z < splits; ++z) {
            const float* part = base + z * (G * DM + 2 * G);
            const float m = part[G * DM + hh];
            const float f = m == neg_inf_f() ? 0.0f : expf(m - mt);
            lt += part[G * DM + G + hh] * f;
            o += part[hh * DM + d] * f;
        }
        store_f(out + (long long)i * out_stride + (long long)(g * group + hh) * head_dim + d, lt > 0.0f ? o / lt : 0.0f);
    }
}

extern "C" __global__ void decode_attn_merge_64_f32(float* out, int out_stride, const float* partial, int splits,
                                                    int num_heads, int kv_heads, int head_dim) {
    decode_attn_merge<64, float>(out, out_stride, partial, splits, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void decode_attn_merge_128_f32(float* out, int out_stride, const float* partial, int splits,
                                                     int num_heads, int kv_heads, int head_dim) {
    decode_attn_merge<128, float>(out, out_stride, partial, splits, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void decode_attn_merge_64_o16(unsigned short* out, int out_stride, const float* partial,
                                                    int splits, int num_heads, int kv_heads, int head_dim) {
    decode_attn_merge<64, unsigned short>(out, out_stride, partial, splits, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void decode_attn_merge_128_o16(unsigned short* out, int out_stride, const float* partial,
                                                     int splits, int num_heads, int kv_heads, int head_dim) {
    decode_attn_merge<128, unsigned short>(out, out_stride, partial, splits, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(128)
    decode_attn_gqa_64_f32(float* out, int out_stride, const float* q, int q_stride, const float* k_cache,
                           const float* v_cache, const int* slots, const int* lens, int num_heads, int kv_heads,
                           int head_dim, int max_len, int split_len, float* partial) {
    decode_attn_gqa<float, 64>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens, num_heads, kv_heads,
                               head_dim, max_len, split_len, partial);
}

extern "C" __global__ void __launch_bounds__(128)
    decode_attn_gqa_128_f32(float* out, int out_stride, const float* q, int q_stride, const float* k_cache,
                            const float* v_cache, const int* slots, const int* lens, int num_heads, int kv_heads,
                            int head_dim, int max_len, int split_len, float* partial) {
    decode_attn_gqa<float, 128>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens, num_heads, kv_heads,
                                head_dim, max_len, split_len, partial);
}

extern "C" __global__ void __launch_bounds__(128)
    decode_attn_gqa_64_f32_bf16(float* out, int out_stride, const float* q, int q_stride,
                                const unsigned short* k_cache, const unsigned short* v_cache, const int* slots,
                                const int* lens, int num_heads, int kv_heads, int head_dim, int max_len, int split_len, float* partial) {
    decode_attn_gqa<unsigned short, 64>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens, num_heads,
                                        kv_heads, head_dim, max_len, split_len, partial);
}

extern "C" __global__ void __launch_bounds__(128)
    decode_attn_gqa_128_f32_bf16(float* out, int out_stride, const float* q, int q_stride,
                                 const unsigned short* k_cache, const unsigned short* v_cache, const int* slots,
                                 const int* lens, int num_heads, int kv_heads, int head_dim, int max_len, int split_len, float* partial) {
    decode_attn_gqa<unsigned short, 128>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens, num_heads,
                                         kv_heads, head_dim, max_len, split_len, partial);
}

// ---------------------------------------------------------------------------------------------
// Entries with a bf16 output (`_o16`): the kernels above with `out` as unsigned short (bf16, each
// element rounded to nearest even as it is written) and every other argument unchanged, so a
// decode step whose products take bf16 operands gets the attention's output in the form the
// output projection reads, without a rounding pass:
//   decode_attn_f32_o16, decode_attn_f32_bf16_o16 (f32 / bf16 cache; grid (num_heads, B));
//   decode_attn_gqa_{64,128}_f32_o16, decode_attn_gqa_{64,128}_f32_bf16_o16 (grid (kv_heads, B)).

extern "C" __global__ void decode_attn_f32_o16(unsigned short* out, int out_stride, const float* q, int q_stride,
                                               const float* k_cache, const float* v_cache, const int* slots,
                                               const int* lens, int num_heads, int kv_heads, int head_dim,
                                               int max_len) {
    decode_attn<float, float, unsigned short>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens,
                                              num_heads, kv_heads, head_dim, max_len);
}

extern "C" __global__ void decode_attn_f32_bf16_o16(unsigned short* out, int out_stride, const float* q,
                                                    int q_stride, const unsigned short* k_cache,
                                                    const unsigned short* v_cache, const int* slots,
                                                    const int* lens, int num_heads, int kv_heads, int head_dim,
                                                    int max_len) {
    decode_attn<float, unsigned short, unsigned short>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens,
                                                       num_heads, kv_heads, head_dim, max_len);
}

extern "C" __global__ void __launch_bounds__(128)
    decode_attn_gqa_64_f32_o16(unsigned short* out, int out_stride, const float* q, int q_stride, const float* k_cache,
        const float* v_cache, const int* slots, const int* lens, int num_heads, int kv_heads, int head_dim,
        int max_len, int split_len, float* partial) {
    decode_attn_gqa<float, 64, unsigned short>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens,
        num_heads, kv_heads, head_dim, max_len, split_len, partial);
}

extern "C" __global__ void __launch_bounds__(128)
    decode_attn_gqa_128_f32_o16(unsigned short* out, int out_stride, const float* q, int q_stride, const float* k_cache,
        const float* v_cache, const int* slots, const int* lens, int num_heads, int kv_heads, int head_dim,
        int max_len, int split_len, float* partial) {
    decode_attn_gqa<float, 128, unsigned short>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens,
        num_heads, kv_heads, head_dim, max_len, split_len, partial);
}

extern "C" __global__ void __launch_bounds__(128)
    decode_attn_gqa_64_f32_bf16_o16(unsigned short* out, int out_stride, const float* q, int q_stride, const unsigned short* k_cache,
        const unsigned short* v_cache, const int* slots, const int* lens, int num_heads, int kv_heads, int head_dim,
        int max_len, int split_len, float* partial) {
    decode_attn_gqa<unsigned short, 64, unsigned short>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens,
        num_heads, kv_heads, head_dim, max_len, split_len, partial);
}

extern "C" __global__ void __launch_bounds__(128)
    decode_attn_gqa_128_f32_bf16_o16(unsigned short* out, int out_stride, const float* q, int q_stride, const unsigned short* k_cache,
        const unsigned short* v_cache, const int* slots, const int* lens, int num_heads, int kv_heads, int head_dim,
        int max_len, int split_len, float* partial) {
    decode_attn_gqa<unsigned short, 128, unsigned short>(out, out_stride, q, q_stride, k_cache, v_cache, slots, lens,
        num_heads, kv_heads, head_dim, max_len, split_len, partial);
}

// ---------------------------------------------------------------------------------------------
// decode_qkv_store_f32 / decode_qkv_store_f32_bf16 (f32 / bf16 cache TC)
//   (float* qkv, int qkv_stride, const float* bias, TC* k_cache, TC* v_cache, const int* slots,
//    const unsigned int* positions, const float* cos_table, const float* sin_table, int b,
//    int num_heads, int kv_heads, int head_dim, int max_len)
//   The decode step's q|k|v epilogue in one pass, for each row i < b of qkv ([b, qkv_stride] f32:
//   H query heads, then KV key heads, then KV value heads, D each):
//   - adds `bias` ([(H + 2KV) * D] f32; none when null) to every element (add_bias_f32's sum);
//   - rotates the query and key heads by positions[i] (rope_f32's rotate-half with the same
//     tables: cos_table, sin_table [max_pos, D / 2]; D even);
//   - writes the rotated queries back into qkv (decode_attn reads them there), and stores the
//     rotated keys and the values in slot slots[i] at position positions[i] (< max_len) of the
//     cache (kv_cache_store's layout; rounded to bf16 for a bf16 cache). The keys and values in
//     qkv itself are left as they were.
//   So it replaces add_bias_f32, rope_f32 and kv_cache_store_f32[_bf16] (three launches) with one.
//   Work items of a row: (H + KV) * D / 2 rotation pairs, then KV * D values, strided over the block.
//   Launch: grid = (b), block = 128 (any multiple of 32), no dynamic shared memory.

template <typename TC>
__device__ void decode_qkv_store(float* __restrict__ qkv, int qkv_stride, const float* __restrict__ bias,
                                 TC* __restrict__ k_cache, TC* __restrict__ v_cache, const int* __restrict__ slots,
                                 const unsigned int* __restrict__ positions, const float* __restrict__ cos_table,
                                 const float* __restrict__ sin_table, int b, int num_heads, int kv_heads,
                                 int head_dim, int max_len) {
    const int i = blockIdx.x;
    if (i >= b) return;
    const int half = head_dim / 2;
    const long long p = positions[i];
    const long long s = slots[i];
    const float* cs = cos_table + p * half;
    const float* sn = sin_table + p * half;
    float* row = qkv + (long long)i * qkv_stride;
    const int pairs = (num_heads + kv_heads) * half;
    const int v_col = (num_heads + kv_heads) * head_dim;
    const int items = pairs + kv_heads * head_dim;
    for (int idx = threadIdx.x; idx < items; idx += blockDim.x) {
        if (idx < pairs) {
            const int h = idx / half;
            const int j = idx - h * half;
            const int lo = h * head_dim + j, hi = lo + half;
            float a = row[lo], bb = row[hi];
            if (bias != nullptr) {
                a += bias[lo];
                bb += bias[hi];
            }
            const float c = cs[j], sv = sn[j];
            const float ra = a * c - bb * sv;
            const float rb = bb * c + a * sv;
            if (h < num_heads) {
                row[lo] = ra;
                row[hi] = rb;
            } else {
                const long long dst = ((s * kv_heads + (h - num_heads)) * max_len + p) * head_dim + j;
                store_f(k_cache + dst, ra);
                store_f(k_cache + dst + half, rb);
            }
        } else {
            const int c = idx - pairs;
            const int g = c / head_dim, d = c - g * head_dim;
            float v = row[v_col + c];
            if (bias != nullptr) v += bias[v_col + c];
            store_f(v_cache + ((s * kv_heads + g) * max_len + p) * head_dim + d, v);
        }
    }
}

extern "C" __global__ void decode_qkv_store_f32(float* qkv, int qkv_stride, const float* bias, float* k_cache,
                                                float* v_cache, const int* slots, const unsigned int* positions,
                                                const float* cos_table, const float* sin_table, int b,
                                                int num_heads, int kv_heads, int head_dim, int max_len) {
    decode_qkv_store<float>(qkv, qkv_stride, bias, k_cache, v_cache, slots, positions, cos_table, sin_table, b,
                            num_heads, kv_heads, head_dim, max_len);
}

extern "C" __global__ void decode_qkv_store_f32_bf16(float* qkv, int qkv_stride, const float* bias,
                                                     unsigned short* k_cache, unsigned short* v_cache,
                                                     const int* slots, const unsigned int* positions,
                                                     const float* cos_table, const float* sin_table, int b,
                                                     int num_heads, int kv_heads, int head_dim, int max_len) {
    decode_qkv_store<unsigned short>(qkv, qkv_stride, bias, k_cache, v_cache, slots, positions, cos_table,
                                     sin_table, b, num_heads, kv_heads, head_dim, max_len);
}
