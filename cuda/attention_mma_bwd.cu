// prelude: mma.cuh wgmma.cuh
// Backward of attention_mma.cu's forward on the tensor cores (bf16 products, f32 accumulation),
// deterministic (no atomics). The f32 reference is attention_bwd.cu (CPU: src/attention/cpu.rs
// attention_backward).
//
// ABI. Run attention_bwd.cu's attn_bwd_delta_f32 first (delta[t * num_heads + h] = dO_t . O_t),
// and attention_mma.cu's attn_pack_bf16 for qkv16 (q|k|v, dm = DM) and do16 (dO, heads =
// num_heads, dm = DM). lse and delta are the forward's and delta's [N, num_heads] f32; dq, dk, dv
// are f32, OVERWRITTEN, each with its own row stride. Entries DM = 64 and 128 (head dims up to DM).
//
// Written once over the product policies of mma.cuh and wgmma.cuh: the _mma_ entries on each warp's mma.sync (sm_80
// and later), the _wgmma_ ones on the block's warpgroup wgmma (sm_90a; they trap elsewhere).
//
// attn_bwd_dq_mma_{64,128}[_x2], attn_bwd_dq_wgmma_{64,128}[_x2] (_x2: G = 2, else 1)
//   (float* dq, int dq_stride, const unsigned short* qkv16, const unsigned short* do16,
//    const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads,
//    int head_dim)
//   Block = 64 G query rows of one head of one sequence (G = 1 or 2 warpgroups, 16 rows per warp),
//   the longest blocks first; loops over key blocks of 64 up to the diagonal (copied one block
//   ahead into two stages, shared by the warpgroups; each takes the blocks up to its own rows'
//   diagonal, so the results do not depend on G):
//   S = Q·Kᵀ and dP = dO·Vᵀ on the tensor cores, P = exp(scale S - lse), dS = P (dP - delta) in
//   registers, dQ += dS·K (dS's C fragments are its A fragments).
//   Launch: grid = (ceil(max_seq_len / (64 G)), num_heads, n_seq), block = 128 G, dynamic shared
//   memory = (2 G + 4) * 64 * DM * 2 + 2 * 64 G * 4 bytes (G tiles of Q and of dO, two stages of K
//   and of V, the rows' lse and delta; G = 1: DM 64: 49664, 128: 98816; G = 2: 66560 and
//   132096).
//
// attn_bwd_dkdv_mma_{64,128}[_x2], attn_bwd_dkdv_wgmma_{64,128}[_x2] (_x2: G = 2, else 1)
//   (float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* qkv16,
//    const unsigned short* do16, const float* lse, const float* delta, const int* cu_seqlens,
//    int num_heads, int kv_heads, int head_dim, int heads_per_block)
//   Block = 64 G keys of one sequence (G = 1 or 2 warpgroups, 16 keys per warp) against
//   `heads_per_block` consecutive query heads of one kv group, the block's y index times
//   heads_per_block being the first; loops over those heads and over query blocks of 64 from the
//   diagonal to the end (copied one block ahead into two stages, shared by the warpgroups; each
//   takes the blocks from its own keys' diagonal, so the results do not depend on G): Sᵀ = K·Qᵀ
//   and dPᵀ = V·dOᵀ, Pᵀ and dSᵀ in registers, dV += Pᵀ·dO and dK += dSᵀ·Q.
//   The block writes its sums at column y * head_dim of dk and dv:
//   - heads_per_block = num_heads / kv_heads (the whole group): y is the kv head and dk, dv are
//     the gradients themselves; grid = (ceil(max_seq_len / (64 G)), kv_heads, n_seq).
//   - heads_per_block = 1: y is the query head and dk, dv are per-head partials ([N, num_heads,
//     head_dim] each, row stride num_heads * head_dim), which attention_bwd.cu's
//     attn_bwd_group_sum_f32 then sums over each group in head order; grid = (ceil(max_seq_len
//     / (64 G)), num_heads, n_seq). A group's query blocks then run on num_heads / kv_heads
//     blocks in parallel instead of one after another in one block (7 for Qwen2-0.5B), with no
//     atomics.
//   Launch: block = 128 G, dynamic shared memory = (2 G + 4) * 64 * DM * 2 + 4 * 64 * 4 bytes
//   (G tiles of K and of V, two stages of Q, dO, lse and delta; G = 1: DM 64: 50176, 128: 99328,
//   within the 99 KiB of sm_86 / sm_89; G = 2: 66560 and 132096).


template <class Ops, int DM, int G>
__device__ void attn_bwd_dq_tc(float* __restrict__ dq, int dq_stride, const unsigned short* __restrict__ qkv16,
                                const unsigned short* __restrict__ do16, const float* __restrict__ lse,
                                const float* __restrict__ delta, const int* __restrict__ cu_seqlens, int num_heads,
                                int kv_heads, int head_dim) {
    constexpr int NT = AM_BK / 8, NO = DM / 8, TILE = AM_TILE(DM);
    unsigned short* Qs = (unsigned short*)am_smem;  // G tiles
    unsigned short* Os = Qs + G * TILE;             // G tiles
    unsigned short* Ks = Os + G * TILE;             // two stages
    unsigned short* Vs = Ks + 2 * TILE;             // two stages
    float* Ls = (float*)(Vs + 2 * TILE);            // the rows' lse (base 2), 64 G
    float* Ds = Ls + AM_BQ * G;                     // and their delta

    // the tile copies assume the block's 128 G threads (copy_rows<DM, 128 G>)
    if (blockDim.x != 128 * G) __trap();
    const int seq = blockIdx.z, h = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    // the longest query blocks (the causal mask's last) start first, so they do not make the tail
    const int q0 = (gridDim.x - 1 - blockIdx.x) * (AM_BQ * G);
    if (q0 >= len) return;
    const int g = h / (num_heads / kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
    // the warp's rows of the block's G tiles (one region of 64 G rows: mma.cuh) are wr .. wr + 15;
    // its warpgroup's, query rows [qw, qw + 64)
    const int wr = warp * 16, qw = q0 + (G == 1 ? 0 : warp >> 2) * AM_BQ;
    const float scale = 1.0f / sqrtf((float)head_dim), log2e = 1.4426950408889634f, sl2 = scale * log2e;

    const long long ps = (long long)(num_heads + 2 * kv_heads) * DM, pd = (long long)num_heads * DM;
    const unsigned short* kb = qkv16 + (long long)start * ps + (long long)(num_heads + g) * DM;
    const unsigned short* vb = qkv16 + (long long)start * ps + (long long)(num_heads + kv_heads + g) * DM;
    for (int t = 0; t < G; ++t) {
        const int r0 = q0 + t * AM_BQ;
        Ops::template load<DM, 128 * G>(Qs + t * TILE, qkv16 + (long long)start * ps + (long long)h * DM, ps, r0, len);
        Ops::template load<DM, 128 * G>(Os + t * TILE, do16 + (long long)start * pd + (long long)h * DM, pd, r0, len);
    }
    fetch_kv<Ops, DM, 128 * G>(Ks, Vs, kb, vb, ps, 0, len);
    const int i0 = q0 + wr + gr, i1 = i0 + 8;
    // (in shared memory, read where used: four registers fewer through the loop)
    if (threadIdx.x < AM_BQ * G) {
        const int i = q0 + threadIdx.x;
        Ls[threadIdx.x] = i < len ? lse[(long long)(start + i) * num_heads + h] * log2e : 0.0f;
        Ds[threadIdx.x] = i < len ? delta[(long long)(start + i) * num_heads + h] : 0.0f;
    }
    cp_wait_all();
    Ops::landed();
    __syncthreads();

    float acc[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const int kend = min(q0 + AM_BQ * G, len);
    for (int k0 = 0, stage = 0; k0 < kend; k0 += AM_BK, stage ^= 1) {
        // the other stage was consumed by the last block (barrier at the loop's end): fill it
        if (k0 + AM_BK < kend) {
            fetch_kv<Ops, DM, 128 * G>(Ks + (stage ^ 1) * TILE, Vs + (stage ^ 1) * TILE, kb, vb, ps, k0 + AM_BK, len);
        }
        // a warpgroup takes the key blocks up to its own rows' diagonal (the bits do not depend on
        // G), and none if its rows all lie past the sequence's end
        if (G == 1 || (k0 < qw + AM_BQ && qw < len)) {
            const unsigned short* Kc = Ks + stage * TILE;
            const unsigned short* Vc = Vs + stage * TILE;
            float s[NT][4], dp[NT][4];
            Ops::template products2<DM, NT>(s, dp, Qs, Kc, Os, Vc, wr, lane);
            // dS = P (dP - delta), with P recomputed from the forward's lse (0 where masked; a key
            // block wholly before the block's rows, all of them in the sequence, needs no mask: a
            // test of the block's, not the warpgroup's, which the compiler keeps in a uniform
            // register; the masked path gives the same values where nothing is masked)
            const bool inside = k0 + AM_BK - 1 <= q0 && q0 + AM_BQ * G <= len;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = k0 + nt * 8 + 2 * tg + (e & 1);
                    const int i = e < 2 ? i0 : i1;
                    const int r = wr + gr + (e < 2 ? 0 : 8);
                    const bool kept = inside || (j <= i && i < len);
                    const float p = kept ? exp2_ftz(__fmaf_rn(s[nt][e], sl2, -Ls[r])) : 0.0f;
                    s[nt][e] = p * (dp[nt][e] - Ds[r]);
                }
            }
            // dQ += dS K
            Ops::template accumulate<NO, NT>(acc, s, Kc, lane);
        }
        cp_wait_all();
        Ops::landed();
        __syncthreads();  // the next stage has landed; this one is consumed
    }
    float* db = dq + (long long)start * dq_stride + (long long)h * head_dim;
    store_rows<NO>(db, dq_stride, acc, scale, scale, i0, i1, len, head_dim, tg);
}

template <class Ops, int DM, int G>
__device__ void attn_bwd_dkdv_tc(float* __restrict__ dk, int dk_stride, float* __restrict__ dv, int dv_stride,
                                  const unsigned short* __restrict__ qkv16, const unsigned short* __restrict__ do16,
                                  const float* __restrict__ lse, const float* __restrict__ delta,
                                  const int* __restrict__ cu_seqlens, int num_heads, int kv_heads, int head_dim,
                                  int heads_per_block) {
    constexpr int NT = AM_BQ / 8, NO = DM / 8, TILE = AM_TILE(DM);
    unsigned short* Ks = (unsigned short*)am_smem;  // G tiles
    unsigned short* Vs = Ks + G * TILE;             // G tiles
    unsigned short* Qs = Vs + G * TILE;             // two stages
    unsigned short* Os = Qs + 2 * TILE;             // two stages
    float* Ls = (float*)(Os + 2 * TILE);  // two stages of the query block's lse (base 2)
    float* Ds = Ls + 2 * AM_BQ;           // and of its delta

    // the tile copies assume the block's 128 G threads (copy_rows<DM, 128 G>)
    if (blockDim.x != 128 * G) __trap();
    const int seq = blockIdx.z, y = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int k0 = blockIdx.x * (AM_BK * G);
    if (k0 >= len) return;
    const int h_first = y * heads_per_block, g = h_first / (num_heads / kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
    // the warp's rows of the block's G tiles (one region of 64 G rows: mma.cuh) are wr .. wr + 15;
    // its warpgroup's, key rows [kw, kw + 64)
    const int wr = warp * 16, kw = k0 + (G == 1 ? 0 : warp >> 2) * AM_BK;
    const float scale = 1.0f / sqrtf((float)head_dim), log2e = 1.4426950408889634f, sl2 = scale * log2e;
    const long long ps = (long long)(num_heads + 2 * kv_heads) * DM, pd = (long long)num_heads * DM;

    // query blocks k0, k0 + 64, ... (nq of them) of heads h_first, h_first + 1, ...: iteration it
    // takes head h_first + it / nq, block k0 + (it % nq) * 64
    const int nq = (len - k0 + AM_BQ - 1) / AM_BQ, iters = heads_per_block * nq;
    // Issue the copies of iteration `it` into stage `st` (Q and dO rows; lse and delta stored
    // directly, visible after the next barrier).
    auto fetch = [&](int it, int st) {
        const int h = h_first + it / nq, q0 = k0 + (it % nq) * AM_BQ;
        Ops::template load<DM, 128 * G>(Qs + st * TILE, qkv16 + (long long)start * ps + (long long)h * DM, ps, q0, len);
        Ops::template load<DM, 128 * G>(Os + st * TILE, do16 + (long long)start * pd + (long long)h * DM, pd, q0, len);
        if (threadIdx.x < AM_BQ) {
            const int i = q0 + threadIdx.x;
            const long long at = (long long)(start + i) * num_heads + h;
            Ls[st * AM_BQ + threadIdx.x] = i < len ? lse[at] * log2e : 0.0f;
            Ds[st * AM_BQ + threadIdx.x] = i < len ? delta[at] : 0.0f;
        }
    };
    for (int t = 0; t < G; ++t) {
        const int r0 = k0 + t * AM_BK;
        const unsigned short* kb = qkv16 + (long long)start * ps + (long long)(num_heads + g) * DM;
        const unsigned short* vb = qkv16 + (long long)start * ps + (long long)(num_heads + kv_heads + g) * DM;
        Ops::template load<DM, 128 * G>(Ks + t * TILE, kb, ps, r0, len);
        Ops::template load<DM, 128 * G>(Vs + t * TILE, vb, ps, r0, len);
    }
    fetch(0, 0);
    cp_commit();
    cp_wait_all();
    Ops::landed();
    __syncthreads();

    const int j0 = k0 + wr + gr, j1 = j0 + 8;  // this lane's key rows
    float dka[NO][4], dva[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = dva[n][0] = dva[n][1] = dva[n][2] =
        dva[n][3] = 0.0f;
    for (int it = 0, stage = 0; it < iters; ++it, stage ^= 1) {
        // the other stage was consumed by the last iteration (barrier at the loop's end): fill it
        if (it + 1 < iters) {
            fetch(it + 1, stage ^ 1);
            cp_commit();
        }
        const int q0 = k0 + (it % nq) * AM_BQ;
        // a warpgroup takes the query blocks from its own keys' diagonal (the bits do not depend
        // on G)
        if (G == 1 || (q0 + AM_BQ > kw && kw < len)) {
            const unsigned short* Qc = Qs + stage * TILE;
            const unsigned short* Oc = Os + stage * TILE;
            const float* Lc = Ls + stage * AM_BQ;
            const float* Dc = Ds + stage * AM_BQ;
            float st[NT][4], dpt[NT][4];
            Ops::template products2<DM, NT>(st, dpt, Ks, Qc, Vs, Oc, wr, lane);
            // Pᵀ and dSᵀ = Pᵀ (dPᵀ - delta): rows are keys, columns queries (no mask where the
            // block's keys lie wholly before the query block and the query block inside the
            // sequence: the block's test, as in the dQ kernel)
            const bool inside = k0 + AM_BK * G - 1 <= q0 && q0 + AM_BQ <= len;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int c = nt * 8 + 2 * tg + (e & 1);
                    const int i = q0 + c;
                    const int j = e < 2 ? j0 : j1;
                    const bool kept = inside || (j <= i && i < len);
                    const float p = kept ? exp2_ftz(__fmaf_rn(st[nt][e], sl2, -Lc[c])) : 0.0f;
                    st[nt][e] = p;
                    dpt[nt][e] = p * (dpt[nt][e] - Dc[c]);
                }
            }
            // dV += Pᵀ dO, dK += dSᵀ Q
            Ops::template accumulate<NO, NT>(dva, st, Oc, lane);
            Ops::template accumulate<NO, NT>(dka, dpt, Qc, lane);
        }
        cp_wait_all();
        Ops::landed();
        __syncthreads();  // the next stage has landed; this one is consumed
    }
    float* dkb = dk + (long long)start * dk_stride + (long long)y * head_dim;
    float* dvb = dv + (long long)start * dv_stride + (long long)y * head_dim;
    store_rows<NO>(dkb, dk_stride, dka, scale, scale, j0, j1, len, head_dim, tg);
    store_rows<NO>(dvb, dv_stride, dva, 1.0f, 1.0f, j0, j1, len, head_dim, tg);
}

// The entries: the two product policies (mma.cuh, wgmma.cuh) at the two head-dim buckets, with one
// warpgroup a block or two (_x2); the wgmma ones trap where the architecture has no wgmma
// (AM_wgmma: the host never launches them there).
// The dQ entries at DM = 64 are held to the registers of two blocks of G = 2 a multiprocessor
// (128) or three of G = 1 (168; at 128 the mma.sync one spills), which they fit without a spill.

extern "C" __global__ void __launch_bounds__(128, 3)
    attn_bwd_dq_mma_64(float* dq, int dq_stride, const unsigned short* qkv16, const unsigned short* do16,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    AM_mma((attn_bwd_dq_tc<MmaOps, 64, 1>(dq, dq_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dkdv_mma_64(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* qkv16,
        const unsigned short* do16, const float* lse, const float* delta, const int* cu_seqlens, int num_heads,
        int kv_heads, int head_dim, int heads_per_block) {
    AM_mma((attn_bwd_dkdv_tc<MmaOps, 64, 1>(dk, dk_stride, dv, dv_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block)));
}

extern "C" __global__ void __launch_bounds__(256, 2)
    attn_bwd_dq_mma_64_x2(float* dq, int dq_stride, const unsigned short* qkv16, const unsigned short* do16,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    AM_mma((attn_bwd_dq_tc<MmaOps, 64, 2>(dq, dq_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_mma_64_x2(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* qkv16,
        const unsigned short* do16, const float* lse, const float* delta, const int* cu_seqlens, int num_heads,
        int kv_heads, int head_dim, int heads_per_block) {
    AM_mma((attn_bwd_dkdv_tc<MmaOps, 64, 2>(dk, dk_stride, dv, dv_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block)));
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dq_mma_128(float* dq, int dq_stride, const unsigned short* qkv16, const unsigned short* do16,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    AM_mma((attn_bwd_dq_tc<MmaOps, 128, 1>(dq, dq_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dkdv_mma_128(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* qkv16,
        const unsigned short* do16, const float* lse, const float* delta, const int* cu_seqlens, int num_heads,
        int kv_heads, int head_dim, int heads_per_block) {
    AM_mma((attn_bwd_dkdv_tc<MmaOps, 128, 1>(dk, dk_stride, dv, dv_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block)));
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dq_mma_128_x2(float* dq, int dq_stride, const unsigned short* qkv16, const unsigned short* do16,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    AM_mma((attn_bwd_dq_tc<MmaOps, 128, 2>(dq, dq_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_mma_128_x2(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* qkv16,
        const unsigned short* do16, const float* lse, const float* delta, const int* cu_seqlens, int num_heads,
        int kv_heads, int head_dim, int heads_per_block) {
    AM_mma((attn_bwd_dkdv_tc<MmaOps, 128, 2>(dk, dk_stride, dv, dv_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block)));
}

extern "C" __global__ void __launch_bounds__(128, 4)
    attn_bwd_dq_wgmma_64(float* dq, int dq_stride, const unsigned short* qkv16, const unsigned short* do16,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    AM_wgmma((attn_bwd_dq_tc<WgmmaOps, 64, 1>(dq, dq_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dkdv_wgmma_64(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* qkv16,
        const unsigned short* do16, const float* lse, const float* delta, const int* cu_seqlens, int num_heads,
        int kv_heads, int head_dim, int heads_per_block) {
    AM_wgmma((attn_bwd_dkdv_tc<WgmmaOps, 64, 1>(dk, dk_stride, dv, dv_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block)));
}

extern "C" __global__ void __launch_bounds__(256, 2)
    attn_bwd_dq_wgmma_64_x2(float* dq, int dq_stride, const unsigned short* qkv16, const unsigned short* do16,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    AM_wgmma((attn_bwd_dq_tc<WgmmaOps, 64, 2>(dq, dq_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_wgmma_64_x2(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* qkv16,
        const unsigned short* do16, const float* lse, const float* delta, const int* cu_seqlens, int num_heads,
        int kv_heads, int head_dim, int heads_per_block) {
    AM_wgmma((attn_bwd_dkdv_tc<WgmmaOps, 64, 2>(dk, dk_stride, dv, dv_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block)));
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dq_wgmma_128(float* dq, int dq_stride, const unsigned short* qkv16, const unsigned short* do16,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    AM_wgmma((attn_bwd_dq_tc<WgmmaOps, 128, 1>(dq, dq_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dkdv_wgmma_128(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* qkv16,
        const unsigned short* do16, const float* lse, const float* delta, const int* cu_seqlens, int num_heads,
        int kv_heads, int head_dim, int heads_per_block) {
    AM_wgmma((attn_bwd_dkdv_tc<WgmmaOps, 128, 1>(dk, dk_stride, dv, dv_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block)));
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dq_wgmma_128_x2(float* dq, int dq_stride, const unsigned short* qkv16, const unsigned short* do16,
        const float* lse, const float* delta, const int* cu_seqlens, int num_heads, int kv_heads, int head_dim) {
    AM_wgmma((attn_bwd_dq_tc<WgmmaOps, 128, 2>(dq, dq_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkdv_wgmma_128_x2(float* dk, int dk_stride, float* dv, int dv_stride, const unsigned short* qkv16,
        const unsigned short* do16, const float* lse, const float* delta, const int* cu_seqlens, int num_heads,
        int kv_heads, int head_dim, int heads_per_block) {
    AM_wgmma((attn_bwd_dkdv_tc<WgmmaOps, 128, 2>(dk, dk_stride, dv, dv_stride, qkv16, do16,
        lse, delta, cu_seqlens, num_heads, kv_heads, head_dim, heads_per_block)));
}
