// prelude: mma.cuh wgmma.cuh
// Causal GQA attention forward on the tensor cores: bf16 products, f32 accumulation, online softmax
// in f32. The attention of `[train] dtype = "bf16"`; the f32 reference is attention_fwd.cu (CPU:
// src/attention/cpu.rs attention_forward). Written once over mma.cuh's product policies: MmaOps
// (each warp's mma.sync m16n8k16, sm_80 and later: the default) and WgmmaOps (the block's
// warpgroup wgmma, Hopper's sm_90a: opt-in, `Gpu::set_attn_mma`); the backward is
// attention_mma_bwd.cu.
//
// ABI.
// attn_pack_bf16
//   (unsigned short* out, const float* x, int x_stride, int n, int heads, int head_dim, int dm)
//   out[(t * heads + hh) * dm + d] = bf16(x[t * x_stride + hh * head_dim + d]) (round to nearest
//   even) for d < head_dim, 0 for head_dim <= d < dm; t < n, hh < heads; dm a multiple of 8, out
//   16-byte aligned. The kernels below read q|k|v packed so (heads = num_heads + 2 kv_heads, the
//   query heads first, then the kv heads' keys, then their values) and dO (heads = num_heads).
//   Any grid of 1-D blocks (grid-stride over the n * heads * dm / 8 groups of 8 outputs).
//
// attn_fwd_mma_{64,128}[_x2], attn_fwd_wgmma_{64,128}[_x2] (DM = the largest head_dim; any
//   1 <= head_dim <= DM works; _x2: G = 2 warpgroups a block, else 1; the wgmma entries trap
//   unless compiled for sm_90a)
//   (float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
//    int num_heads, int kv_heads, int head_dim)
//   qkv16: q|k|v packed with dm = DM; out, lse, cu_seqlens and the results as attention_fwd.cu's
//   attn_fwd_DM_f32: out[t, h * head_dim + d] (row stride out_stride), lse[t * num_heads + h] =
//   log sum_j exp(scale * q_t . k_j) of the rounded q, k. The probabilities P are rounded to bf16
//   for the P·V product, while the row sums l and the log-sum-exp use the f32 probabilities (as
//   FlashAttention does).
//
//   Block = 64 G query rows of one head of one sequence, G = 1 or 2 warpgroups of 4 warps, 16 rows
//   per warp; the causal mask's longest blocks first; key blocks of 64 up to the diagonal, copied
//   (cp.async) one block ahead into the other of two shared-memory stages and shared by the G
//   warpgroups (G = 2 halves the copies per product). Each warpgroup attends the key blocks up to
//   its own rows' diagonal, so the results do not depend on G.
//   Launch: grid = (ceil(max_seq_len / (64 G)), num_heads, n_seq), block = 128 G (G = 1 or 2: one
//   warpgroup per 64 query rows, as wgmma needs), dynamic shared memory = (G + 4) * 64 * DM * 2
//   bytes (G tiles of Q, two stages of K and of V): G = 1: DM = 64: 40960 B, DM = 128: 81920 B;
//   G = 2: 49152 B and 98304 B (the host raises the limit above 48 KiB).
//   At DM = 64 the entries are held to 128 registers (__launch_bounds__ with 512 threads a
//   multiprocessor: two blocks of G = 2 or four of G = 1), which they fit without a spill.

extern "C" __global__ void attn_pack_bf16(unsigned short* __restrict__ out, const float* __restrict__ x, int x_stride,
                                          int n, int heads, int head_dim, int dm) {
    const int per_row = dm / 8;
    const long long groups = (long long)n * heads * per_row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < groups;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / per_row;  // t * heads + hh
        const int d0 = (int)(i - row * per_row) * 8;
        const long long t = row / heads;
        const int hh = (int)(row - t * heads);
        const float* src = x + t * x_stride + (long long)hh * head_dim;
        unsigned int w[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int d = d0 + 2 * e;
            w[e] = pack_bf16(d < head_dim ? src[d] : 0.0f, d + 1 < head_dim ? src[d + 1] : 0.0f);
        }
        *(uint4*)(out + row * dm + d0) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

template <class Ops, int DM, int G>
__device__ void attn_fwd_tc(float* __restrict__ out, int out_stride, float* __restrict__ lse,
                             const unsigned short* __restrict__ qkv16, const int* __restrict__ cu_seqlens,
                             int num_heads, int kv_heads, int head_dim) {
    constexpr int NT = AM_BK / 8;   // key tiles of 8 in a key block
    constexpr int NO = DM / 8;      // output tiles of 8 dims
    constexpr int TILE = AM_TILE(DM);
    // G tiles of Q, then two stages of K and of V: the next key block's copies run during this
    // one's products
    unsigned short* Qs = (unsigned short*)am_smem;
    unsigned short* Ks = Qs + G * TILE;
    unsigned short* Vs = Ks + 2 * TILE;

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
    const float sl2 = 1.4426950408889634f / sqrtf((float)head_dim);  // scale * log2(e)

    const long long ps = (long long)(num_heads + 2 * kv_heads) * DM;  // packed row stride
    const unsigned short* qb = qkv16 + (long long)start * ps + (long long)h * DM;
    const unsigned short* kb = qkv16 + (long long)start * ps + (long long)(num_heads + g) * DM;
    const unsigned short* vb = qkv16 + (long long)start * ps + (long long)(num_heads + kv_heads + g) * DM;
    for (int t = 0; t < G; ++t) Ops::template load<DM, 128 * G>(Qs + t * TILE, qb, ps, q0 + t * AM_BQ, len);
    fetch_kv<Ops, DM, 128 * G>(Ks, Vs, kb, vb, ps, 0, len);
    cp_wait_all();
    Ops::landed();
    __syncthreads();

    // (with mma.sync: the warp's Q rows as A fragments, one per 16 head dims)
    typename Ops::template QFrags<DM> qf;
    qf.load(Qs, wr, lane);
    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    // rows gr and gr + 8 of the warp: running max (base-2 units) and this thread's share of the sum
    float m0 = neg_inf_f(), m1 = neg_inf_f(), l0 = 0.0f, l1 = 0.0f;
    const int i0 = q0 + wr + gr, i1 = i0 + 8;

    const int kend = min(q0 + AM_BQ * G, len);
    for (int k0 = 0, stage = 0; k0 < kend; k0 += AM_BK, stage ^= 1) {
        // the other stage was consumed by the last block (barrier at the loop's end): fill it
        if (k0 + AM_BK < kend) {
            fetch_kv<Ops, DM, 128 * G>(Ks + (stage ^ 1) * TILE, Vs + (stage ^ 1) * TILE, kb, vb, ps, k0 + AM_BK, len);
        }
        // a warpgroup attends the key blocks up to its own diagonal, as a block of its 64 rows
        // alone would (the same sums: the bits do not depend on G), and none if its rows all lie
        // past the sequence's end
        if (G == 1 || (k0 < qw + AM_BQ && qw < len)) {
            const unsigned short* Kc = Ks + stage * TILE;
            const unsigned short* Vc = Vs + stage * TILE;
            float s[NT][4];
            Ops::template scores<DM, NT>(s, qf, Kc, lane);
            // a key block wholly before the block's rows and the sequence's end needs no mask (the
            // block's test, kept in a uniform register; the masked path gives the same values
            // where nothing is masked)
            const bool inside = k0 + AM_BK - 1 <= q0 && k0 + AM_BK <= len;
            softmax_block<NT, NO>(s, o, m0, m1, l0, l1, inside, k0, i0, i1, len, tg, sl2);
            // O += P V, 16 keys per step: P's A fragment is two key tiles of S's C fragments
            Ops::template accumulate<NO, NT>(o, s, Vc, lane);
        }
        cp_wait_all();
        Ops::landed();
        __syncthreads();  // the next stage has landed; this one is consumed
    }
    float* ob = out + (long long)start * out_stride + (long long)h * head_dim;
    finish_rows<NO>(lse, ob, out_stride, o, m0, m1, l0, l1, start, num_heads, h, i0, i1, len, head_dim, tg);
}

// The entries: the two product policies (mma.cuh, wgmma.cuh) at the two head-dim buckets, with one
// warpgroup a block or two (_x2); the wgmma ones trap where the architecture has no wgmma
// (AM_wgmma: the host never launches them there).

extern "C" __global__ void __launch_bounds__(128, 4)
    attn_fwd_mma_64(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                    int num_heads, int kv_heads, int head_dim) {
    attn_fwd_tc<MmaOps, 64, 1>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256, 2)
    attn_fwd_mma_64_x2(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                       int num_heads, int kv_heads, int head_dim) {
    attn_fwd_tc<MmaOps, 64, 2>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(128)
    attn_fwd_mma_128(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                     int num_heads, int kv_heads, int head_dim) {
    attn_fwd_tc<MmaOps, 128, 1>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_fwd_mma_128_x2(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                        int num_heads, int kv_heads, int head_dim) {
    attn_fwd_tc<MmaOps, 128, 2>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(128, 4)
    attn_fwd_wgmma_64(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                      int num_heads, int kv_heads, int head_dim) {
    AM_wgmma((attn_fwd_tc<WgmmaOps, 64, 1>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(256, 2)
    attn_fwd_wgmma_64_x2(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                         int num_heads, int kv_heads, int head_dim) {
    AM_wgmma((attn_fwd_tc<WgmmaOps, 64, 2>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(128)
    attn_fwd_wgmma_128(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                       int num_heads, int kv_heads, int head_dim) {
    AM_wgmma((attn_fwd_tc<WgmmaOps, 128, 1>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim)));
}

extern "C" __global__ void __launch_bounds__(256)
    attn_fwd_wgmma_128_x2(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                          int num_heads, int kv_heads, int head_dim) {
    AM_wgmma((attn_fwd_tc<WgmmaOps, 128, 2>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim)));
}
