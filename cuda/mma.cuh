// Tensor-core building blocks of the bf16 attention kernels (attention_mma.cu, forward;
// attention_mma_bwd.cu, backward), prepended to those files after common.cuh by the loader (their
// first line names it): warp-level mma.sync m16n8k16 with bf16 operands and f32 accumulators
// (sm_80 and later), fragment loads through ldmatrix, and 16-byte cp.async copies of the packed
// bf16 rows that attn_pack_bf16 writes (src/cuda/mma.rs emulates these on the host); and the
// first of the two product policies the kernels are written over (MmaOps, at the end; WgmmaOps,
// on Hopper's warpgroup wgmma, is in wgmma.cuh, which the loader prepends after this file).
//
// Packed rows: attn_pack_bf16 stores q|k|v (and dO) as [N, heads, DM] bf16, each head's row zero
// padded from head_dim to DM, so every row segment of 8 elements is 16 bytes, 16-byte aligned, and
// a tile row is DM / 8 cp.async copies with no conversion; q, k, v and dO are rounded (round to
// nearest even) once there, exactly as the kernels used to round them as they entered shared memory.
//
// Shared-memory tiles are 64 rows of DM bf16 (DM 64 or 128), unpadded, each row's 16-byte segments
// permuted (tile_at): segment c of row r is stored at segment c ^ (r & 7) of the row. An ldmatrix
// phase reads one segment from each of 8 consecutive rows (row index a multiple of 8 for the first),
// and a row is 128 or 256 bytes, so the 8 segments land at 8 distinct 16-byte positions modulo 128
// bytes: 8 distinct groups of 4 banks, no conflict, as a 16-byte padding per row would give, in
// 1/9 less memory (the head-dim-128 backward then fits the 99 KiB of an sm_86 / sm_89 GPU).
// A block of G warpgroups keeps the rows it owns in G tiles one after another: one region of 64 G
// rows, row r at the index tile_at (or cm_at, below) gives for r, since both place row r + 64 one
// tile after row r. Warp w's rows are 16 w .. 16 w + 15 of the region, of its warpgroup's tile
// w / 4.

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
// 64 rows x DM bf16: one shared-memory tile
#define AM_TILE(DM) (64 * (DM))

extern __shared__ __align__(16) unsigned char am_smem[];

// Two floats as one register of two bf16, `lo` in the low half.
__device__ __forceinline__ unsigned int pack_bf16(float lo, float hi) {
    return (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
}

// pack_bf16 by the hardware (cvt.rn.bf16x2.f32, sm_80 and later: one F2FP instruction where
// pack_bf16 takes about ten integer ones): the same bits for every value but NaN, which becomes
// the canonical 0x7fff. For the products' operands computed in the kernels (P, dS).
__device__ __forceinline__ unsigned int pack_bf16_rn(float lo, float hi) {
#ifdef ARBOR_SIMT
    return pack_bf16(lo, hi);
#else
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// The index in a tile of row r's 8 elements from column c (a multiple of 8): segment c / 8 of the
// row, moved to segment (c / 8) ^ (r & 7) (see the header). src/cuda/mma.rs: tile_at.
template <int DM>
__device__ __forceinline__ int tile_at(int r, int c) {
    return r * DM + ((((c >> 3) ^ r) & 7) | ((c >> 3) & ~7)) * 8;
}

// d (16 x 8 f32) += a (16 x 16 bf16) * b (16 x 8 bf16), one warp.
__device__ __forceinline__ void mma_16816(float* d, const unsigned int* a, const unsigned int* b) {
#ifdef ARBOR_SIMT
    simt::mma_16816(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Fragments from a bf16 tile S in shared memory (64 x DM, stored as tile_at says, so every 8-element
// row segment is 16 bytes, 16-byte aligned), loaded with ldmatrix: four 8 x 8 matrices per
// instruction, lanes 8i .. 8i + 7 giving the addresses of the rows of matrix i (lane l: row l % 8 of
// matrix l / 8). Without .trans, lane l receives in register i the elements (row l / 4, columns
// 2 (l % 4), + 1) of matrix i, the lower column in the low half: exactly the mma fragment element
// (gr, 2 tg); with .trans it receives (rows 2 (l % 4), + 1; column l / 4).
__device__ __forceinline__ void ldsm_x4(unsigned int* r, const unsigned short* row) {
#ifdef ARBOR_SIMT
    simt::ldmatrix_x4(r, row, false);
#else
    const unsigned int at = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
#endif
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned int* r, const unsigned short* row) {
#ifdef ARBOR_SIMT
    simt::ldmatrix_x4(r, row, true);
#else
    const unsigned int at = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
#endif
}

// The A fragment of S's 16 x 16 block at (r0, c0): matrices (r0, c0), (r0 + 8, c0), (r0, c0 + 8),
// (r0 + 8, c0 + 8) are a[0] .. a[3].
template <int DM>
__device__ __forceinline__ void frag_a(unsigned int* a, const unsigned short* S, int r0, int c0, int lane) {
    const int i = lane >> 3;
    ldsm_x4(a, S + tile_at<DM>(r0 + (lane & 7) + (i & 1) * 8, c0 + (i >> 1) * 8));
}

// The B fragments (k x n = 16 x 8) of two key tiles that are the transposes of S's 8 x 16 blocks
// at (n0, c0) and (n0 + 8, c0): column n of B is row n0 + n of S (S·Xᵀ products: K for Q·Kᵀ).
// b[0], b[1] belong to tile n0 and b[2], b[3] to tile n0 + 8: matrices (n0, c0), (n0, c0 + 8),
// (n0 + 8, c0), (n0 + 8, c0 + 8).
template <int DM>
__device__ __forceinline__ void frag_bt2(unsigned int* b, const unsigned short* S, int n0, int c0, int lane) {
    const int i = lane >> 3;
    ldsm_x4(b, S + tile_at<DM>(n0 + (lane & 7) + (i >> 1) * 8, c0 + (i & 1) * 8));
}

// The B fragments of S's 16 x 8 blocks at (k0, n0) and (k0, n0 + 8) as they stand (P·V
// products: V), b[0], b[1] the first: matrices (k0, n0), (k0 + 8, n0), (k0, n0 + 8), (k0 + 8,
// n0 + 8), transposed as they load.
template <int DM>
__device__ __forceinline__ void frag_b2(unsigned int* b, const unsigned short* S, int k0, int n0, int lane) {
    const int i = lane >> 3;
    ldsm_x4_trans(b, S + tile_at<DM>(k0 + (lane & 7) + (i & 1) * 8, n0 + (i >> 1) * 8));
}

// The A fragment of 16 columns held as two C fragments (columns 0..7 in lo, 8..15 in hi).
__device__ __forceinline__ void c_to_a(unsigned int* a, const float* lo, const float* hi) {
    a[0] = pack_bf16_rn(lo[0], lo[1]);
    a[1] = pack_bf16_rn(lo[2], lo[3]);
    a[2] = pack_bf16_rn(hi[0], hi[1]);
    a[3] = pack_bf16_rn(hi[2], hi[3]);
}

// s[nt] = the warp's rows [r0, r0 + 16) of X1 times the transposed rows [8 nt, 8 nt + 8) of Y1,
// over the DM head dims, for NT tiles; t[nt] the same of X2 and Y2 (the backward's pair S = Q·Kᵀ,
// dP = dO·Vᵀ, or Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ).
template <int DM, int NT>
__device__ __forceinline__ void row_products2(float (*s)[4], float (*t)[4], const unsigned short* X1,
                                              const unsigned short* Y1, const unsigned short* X2,
                                              const unsigned short* Y2, int r0, int lane) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = t[nt][e] = 0.0f;
    }
#pragma unroll
    for (int kd = 0; kd < DM / 16; ++kd) {
        unsigned int a1[4], a2[4];
        frag_a<DM>(a1, X1, r0, kd * 16, lane);
        frag_a<DM>(a2, X2, r0, kd * 16, lane);
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            unsigned int b[4];
            frag_bt2<DM>(b, Y1, nt * 8, kd * 16, lane);
            mma_16816(s[nt], a1, b);
            mma_16816(s[nt + 1], a1, b + 2);
            frag_bt2<DM>(b, Y2, nt * 8, kd * 16, lane);
            mma_16816(t[nt], a2, b);
            mma_16816(t[nt + 1], a2, b + 2);
        }
    }
}

// acc[n] += C · Y[:, 8 n .. 8 n + 8), where C (16 x 8 NT) is held as NT C fragments (P, dS or their
// transposes) and Y is a tile of 8 NT rows of 8 NO bf16 in shared memory.
template <int NO, int NT>
__device__ __forceinline__ void accumulate_product(float (*acc)[4], float (*c)[4], const unsigned short* Y, int lane) {
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
        unsigned int a[4];
        c_to_a(a, c[2 * kk], c[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < NO; n += 2) {
            unsigned int b[4];
            frag_b2<NO * 8>(b, Y, kk * 16, n * 8, lane);
            mma_16816(acc[n], a, b);
            mma_16816(acc[n + 1], a, b + 2);
        }
    }
}

// The lane's two rows i0 and i1 of a warp's NO C fragments (16 rows x 8 NO columns), times s0 and s1,
// into the f32 rows of `base` (row stride `stride`): columns below head_dim, rows below len.
template <int NO>
__device__ __forceinline__ void store_rows(float* base, int stride, const float (*acc)[4], float s0, float s1, int i0,
                                           int i1, int len, int head_dim, int tg) {
#pragma unroll
    for (int n = 0; n < NO; ++n) {
        const int d = n * 8 + 2 * tg;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = half ? i1 : i0;
            if (i >= len) continue;
            const float sc = half ? s1 : s0;
            float* r = base + (long long)i * stride;
            if (d < head_dim) r[d] = acc[n][2 * half] * sc;
            if (d + 1 < head_dim) r[d + 1] = acc[n][2 * half + 1] * sc;
        }
    }
}

// 2^x on the special-function unit with a subnormal result flushed to zero (ex2.approx.ftz: one
// MUFU.EX2; exp2f adds a range test and two multiplies per call to keep subnormal results, which a
// probability beside its row's largest, 1, never needs). 2^-inf = 0.
__device__ __forceinline__ float exp2_ftz(float x) {
#ifdef ARBOR_SIMT
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y;
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// One key block of the forward's online softmax (FlashAttention-2) for a warp's 16 query rows, of
// which this lane holds rows i0 (gr) and i1 (gr + 8), over NT key tiles of 8 from key k0: the
// causal and length mask unless the block is `inside` (wholly before the query block and the
// sequence's end: the same values, fewer instructions), the rows' new maxima (the four lanes of a
// row combine theirs) in base-2 units (sl2 = scale · log2 e), the accumulators o (NO tiles) and
// the lane's partial row sums l rescaled, and s turned into the unnormalised probabilities
// 2^(sl2 s - max). Shared by both product policies (MmaOps, WgmmaOps), whose accumulators lay rows
// and columns out alike. The maxima are taken over the raw scores and scaled once (rounding is
// monotonic, so this is the largest rounded scaled score), and each exponent is one explicit
// multiply-add: both paths give a score the same bits, as a block of two warpgroups may take the
// masked path where one of one would not (attention_mma.cu).
template <int NT, int NO, bool MASK>
__device__ __forceinline__ void softmax_block_(float (*s)[4], float (*o)[4], float& m0, float& m1, float& l0,
                                               float& l1, int k0, int i0, int i1, int len, int tg, float sl2) {
    if (MASK) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = k0 + nt * 8 + 2 * tg + (e & 1);
                const int i = e < 2 ? i0 : i1;
                if (!(j <= i && j < len)) s[nt][e] = neg_inf_f();
            }
        }
    }
    float mx0 = neg_inf_f(), mx1 = neg_inf_f();
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
        mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(ARBOR_FULL_MASK, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(ARBOR_FULL_MASK, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(ARBOR_FULL_MASK, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(ARBOR_FULL_MASK, mx1, 2));
    const float mn0 = fmaxf(m0, mx0 * sl2), mn1 = fmaxf(m1, mx1 * sl2);
    // a row with no key yet keeps max -inf: nothing to rescale, and its scores (all -inf) give 0
    // against a maximum of 0
    const float c0 = mn0 == neg_inf_f() ? 1.0f : exp2_ftz(m0 - mn0);
    const float c1 = mn1 == neg_inf_f() ? 1.0f : exp2_ftz(m1 - mn1);
    const float b0 = mn0 == neg_inf_f() ? 0.0f : -mn0, b1 = mn1 == neg_inf_f() ? 0.0f : -mn1;
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
            const float p = exp2_ftz(__fmaf_rn(s[nt][e], sl2, e < 2 ? b0 : b1));
            s[nt][e] = p;
            if (e < 2) l0 += p;
            else l1 += p;
        }
    }
    m0 = mn0;
    m1 = mn1;
}
// (each path compiled on its own: one merged path takes more registers)
template <int NT, int NO>
__device__ __forceinline__ void softmax_block(float (*s)[4], float (*o)[4], float& m0, float& m1, float& l0,
                                              float& l1, bool inside, int k0, int i0, int i1, int len, int tg,
                                              float sl2) {
    if (inside) softmax_block_<NT, NO, false>(s, o, m0, m1, l0, l1, k0, i0, i1, len, tg, sl2);
    else softmax_block_<NT, NO, true>(s, o, m0, m1, l0, l1, k0, i0, i1, len, tg, sl2);
}

// The forward's end for the lane's rows i0 and i1: the row sums over the row's four lanes, the
// log-sum-exp (natural log) at lse[(start + i) * num_heads + h], and the output rows, normalised,
// at ob (row stride out_stride), columns below head_dim, rows below len.
template <int NO>
__device__ __forceinline__ void finish_rows(float* lse, float* ob, int out_stride, const float (*o)[4], float m0,
                                            float m1, float l0, float l1, int start, int num_heads, int h, int i0,
                                            int i1, int len, int head_dim, int tg) {
    l0 += __shfl_xor_sync(ARBOR_FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(ARBOR_FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(ARBOR_FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(ARBOR_FULL_MASK, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    const float ln2 = 0.6931471805599453f;
    if (tg == 0 && i0 < len) lse[(long long)(start + i0) * num_heads + h] = (m0 + log2f(l0)) * ln2;
    if (tg == 0 && i1 < len) lse[(long long)(start + i1) * num_heads + h] = (m1 + log2f(l1)) * ln2;
    store_rows<NO>(ob, out_stride, o, inv0, inv1, i0, i1, len, head_dim, tg);
}

// 16-byte asynchronous copy global -> shared (cp.async.cg, L2 only); `bytes` < 16 zero-fills
// the rest (0: no read, 16 zeros).
__device__ __forceinline__ void cp_async16(unsigned short* dst, const unsigned short* src, int bytes) {
#ifdef ARBOR_SIMT
    simt::cp_async16(dst, src, bytes);
#else
    const unsigned int at = (unsigned int)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(at), "l"(src), "r"(bytes) : "memory");
#endif
}

#ifdef ARBOR_SIMT
__device__ __forceinline__ void cp_commit() { simt::cp_commit(); }
#else
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
#endif

// Wait until this thread's copies are done (a barrier then makes every thread's visible).
#ifdef ARBOR_SIMT
__device__ __forceinline__ void cp_wait_all() { simt::cp_wait_all(); }
#else
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
#endif

// Issue the copies of rows [r0, r0 + 64) of a packed bf16 matrix (row stride `stride` elements,
// rows DM wide, x 16-byte aligned) into the tile S (as tile_at says); rows at or past `len` are
// zero-filled. The whole block of NT threads takes part, thread t the 16-byte segment t % (DM / 8)
// of rows t / (DM / 8) + i NT / (DM / 8): a column and a swizzle fixed per thread, so a copy is an
// address step and a bound test (the block's size as a constant: no division or loop test at run
// time). Commit, wait and barrier are the caller's.
template <int DM, int NT>
__device__ __forceinline__ void copy_rows(unsigned short* S, const unsigned short* __restrict__ x, long long stride,
                                          int r0, int len) {
    constexpr int C = DM / 8, RS = NT / C;  // RS rows per pass of the block
    static_assert(NT % C == 0 && RS % 8 == 0 && 64 % RS == 0, "a pass covers whole swizzle groups of rows");
    const int t = (int)threadIdx.x, c = (t % C) * 8, r = r0 + t / C;
    // (rows RS apart share a swizzle: RS is a multiple of 8)
    unsigned short* dst = S + tile_at<DM>(t / C, c);
    const unsigned short* src = x + (long long)r * stride + c;
    const long long step = (long long)RS * stride;
#pragma unroll
    for (int i = 0; i < 64 / RS; ++i, src += step) {
        const bool in = r + i * RS < len;
        cp_async16(dst + i * RS * DM, in ? src : x, in ? 16 : 0);
    }
}

// Issue the copies of key/value block [k0, k0 + 64) (packed rows at kb and vb, row stride `stride`)
// into the tiles K and V as Ops lays tiles out, and commit them (with any copy issued before) as
// one group.
template <class Ops, int DM, int NT>
__device__ __forceinline__ void fetch_kv(unsigned short* K, unsigned short* V, const unsigned short* kb,
                                         const unsigned short* vb, long long stride, int k0, int len) {
    Ops::template load<DM, NT>(K, kb, stride, k0, len);
    Ops::template load<DM, NT>(V, vb, stride, k0, len);
    cp_commit();
}


// ---------------------------------------------------------------------------------------------
// The kernels' products as two interchangeable policies (MmaOps here, WgmmaOps in wgmma.cuh) over
// the same blocks of 128 G threads and 64 G rows (warp w: rows 16 w .. 16 w + 15, of warpgroup
// w / 4), with the same accumulator layout, so the attention kernels are written once over them
// (template parameter Ops).
// ---------------------------------------------------------------------------------------------

// Member functions of the policies (simt.h's __device__ is `static`, which a member function may
// not be twice, nor a non-static one at all)
#ifdef ARBOR_SIMT
#define AM_FN inline
#else
#define AM_FN __device__ __forceinline__
#endif

// Each warp's mma.sync (sm_80 and later): tiles laid out by tile_at, fragments through ldmatrix.
struct MmaOps {
    // rows [r0, r0 + 64) into a tile by a block of NT threads (see copy_rows)
    template <int DM, int NT>
    static AM_FN void load(unsigned short* S, const unsigned short* x, long long stride, int r0, int len) {
        copy_rows<DM, NT>(S, x, stride, r0, len);
    }
    // after this thread's copies landed, before the barrier that shares them
    static AM_FN void landed() {}
    // the forward's Q rows as A fragments, held for every key block
    template <int DM>
    struct QFrags {
        unsigned int a[DM / 16][4];
        AM_FN void load(const unsigned short* Qs, int r0, int lane) {
#pragma unroll
            for (int kd = 0; kd < DM / 16; ++kd) frag_a<DM>(a[kd], Qs, r0, kd * 16, lane);
        }
    };
    // s = the warp's rows of Q times Kᵀ (NT key tiles of 8)
    template <int DM, int NT>
    static AM_FN void scores(float (*s)[4], const QFrags<DM>& q, const unsigned short* K, int lane) {
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            s[nt + 1][0] = s[nt + 1][1] = s[nt + 1][2] = s[nt + 1][3] = 0.0f;
#pragma unroll
            for (int kd = 0; kd < DM / 16; ++kd) {
                unsigned int b[4];
                frag_bt2<DM>(b, K, nt * 8, kd * 16, lane);
                mma_16816(s[nt], q.a[kd], b);
                mma_16816(s[nt + 1], q.a[kd], b + 2);
            }
        }
    }
    // s = X1 Y1ᵀ and t = X2 Y2ᵀ for the warp's rows r0 .. r0 + 15 of X1 and X2 (row_products2)
    template <int DM, int NT>
    static AM_FN void products2(float (*s)[4], float (*t)[4], const unsigned short* X1, const unsigned short* Y1,
                                const unsigned short* X2, const unsigned short* Y2, int r0, int lane) {
        row_products2<DM, NT>(s, t, X1, Y1, X2, Y2, r0, lane);
    }
    // acc += C Y (accumulate_product)
    template <int NO, int NT>
    static AM_FN void accumulate(float (*acc)[4], float (*c)[4], const unsigned short* Y, int lane) {
        accumulate_product<NO, NT>(acc, c, Y, lane);
    }
};
