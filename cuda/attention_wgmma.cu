// prelude: mma.cuh
// Causal GQA attention forward on Hopper's warpgroup tensor-core products (wgmma, sm_90a only): the
// algorithm, inputs and results of attn_fwd_mma_DM (attention_mma.cu), with the block's two
// products issued as wgmma by its one warpgroup instead of mma.sync by each warp. Opt-in
// (`Gpu::set_attn_fwd`, `bench gpu --attn-fwd wgmma`) until a GPU run has checked and timed it.
//
// ABI.
// attn_fwd_wgmma_64 / attn_fwd_wgmma_128: attn_fwd_mma_DM's parameters and results, launch grid and
//   dynamic shared memory (5 * 64 * DM * 2 bytes: Q, two stages of K and of V); block = 128 (MUST be
//   128: one warpgroup, each warp 16 of the 64 query rows). Compiled for compute_90a; for any
//   other architecture the entries exist and trap.
//
// Shared-memory tiles (64 rows x DM bf16) in wgmma's unswizzled core-matrix layout: row r's 8
// elements from column 8 c at element ((r / 8) (DM / 8) + c) 64 + (r % 8) 8 (cm_at), so every
// 8 x 8 core matrix is 128 contiguous bytes. One layout serves all three operands:
//   S = Q Kᵀ: A = Q (m = query row, k = head dim) and B = K (n = key, k = head dim), both K-major:
//     for head dims 16 kd .. 16 kd + 15 the descriptor starts at core column 2 kd, LBO (the next
//     8 k) = 128 bytes, SBO (the next 8 rows) = 16 DM bytes;
//   O += P V: A = P from registers (two key tiles of S's accumulator fragments, as in
//     attention_mma.cu), B = V (n = head dim, k = key) MN-major (transposed): for keys 16 kk ..
//     16 kk + 15 the descriptor starts at row 16 kk, LBO (the next 8 keys) = 16 DM bytes, SBO (the
//     next 8 head dims) = 128 bytes.
// The accumulators of m64nNk16 lay rows and columns out as mma.sync's C fragments: warp w holds
// rows 16 w .. 16 w + 15, d[4 j + e] at (gr + 8 (e >= 2), 8 j + 2 tg + (e & 1)), so the softmax and
// the epilogue are mma.cuh's (softmax_block, finish_rows).
// Ordering: each thread fences its landed cp.async copies for the async proxy (fence.proxy.async)
// before the barrier after which wgmma reads them; wgmma.fence precedes each batch of products
// (the accumulators were touched since); every batch is waited for before its results are read.

#if defined(ARBOR_SIMT) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ARBOR_WGMMA 1
#endif

// Row r's segment c (8 elements from column 8 c) in a 64 x DM tile: see the header.
template <int DM>
__device__ __forceinline__ int cm_at(int r, int c) {
    return ((r >> 3) * (DM / 8) + c) * 64 + (r & 7) * 8;
}

// Issue the copies of rows [r0, r0 + 64) of a packed bf16 matrix (row stride `stride` elements)
// into a tile laid out by cm_at; rows at or past `len` are zero-filled. Eight consecutive threads
// take the eight rows of one core matrix: 128 contiguous bytes of shared memory.
template <int DM>
__device__ __forceinline__ void copy_rows_cm(unsigned short* S, const unsigned short* __restrict__ x, long long stride,
                                             int r0, int len) {
    constexpr int C = DM / 8;
    for (int idx = threadIdx.x; idx < 64 * C; idx += blockDim.x) {
        const int r = (idx & 7) | ((idx / (8 * C)) << 3), c = (idx >> 3) % C;
        const bool in = r0 + r < len;
        cp_async16(S + cm_at<DM>(r, c), in ? x + (long long)(r0 + r) * stride + c * 8 : x, in ? 16 : 0);
    }
}

#ifdef ARBOR_WGMMA
// A shared-memory matrix descriptor, unswizzled: start address, LBO and SBO in bytes.
__device__ __forceinline__ unsigned long long wg_desc(const unsigned short* p, unsigned int lbo, unsigned int sbo) {
#ifdef ARBOR_SIMT
    const unsigned int at = simt::smem_addr(p);
#else
    const unsigned int at = (unsigned int)__cvta_generic_to_shared(p);
#endif
    return (unsigned long long)((at & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32);
}

#ifdef ARBOR_SIMT
__device__ __forceinline__ void wg_fence() { simt::wgmma_fence(); }
__device__ __forceinline__ void wg_commit() { simt::wgmma_commit(); }
__device__ __forceinline__ void wg_wait0() { simt::wgmma_wait(0); }
__device__ __forceinline__ void proxy_fence() { simt::fence_proxy_async(); }
template <int N>
__device__ __forceinline__ void wg_hold(float*) {}
#else
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Pin N accumulator registers at this point of the program: the compiler may not move their reads
// or writes across it (a wait's results would otherwise be read before the wait).
template <int N>
__device__ __forceinline__ void wg_hold(float* d) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
#endif

// d (64 x 64 f32, 32 per thread) (+)= A B, A and B from shared memory (K-major); scale_d 0 ignores d.
__device__ __forceinline__ void wgmma_n64_ss(float* d, unsigned long long da, unsigned long long db, int scale_d) {
#ifdef ARBOR_SIMT
    simt::wgmma_bf16(d, 64, da, nullptr, db, scale_d, 0, 0);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(scale_d));
#endif
}

// d (64 x N f32, N / 2 per thread) += A B, A from registers (a), B from shared memory MN-major.
__device__ __forceinline__ void wgmma_n64_rs_t(float* d, const unsigned int* a, unsigned long long db, int scale_d) {
#ifdef ARBOR_SIMT
    simt::wgmma_bf16(d, 64, 0, a, db, scale_d, 0, 1);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
#endif
}

__device__ __forceinline__ void wgmma_n128_rs_t(float* d, const unsigned int* a, unsigned long long db, int scale_d) {
#ifdef ARBOR_SIMT
    simt::wgmma_bf16(d, 128, 0, a, db, scale_d, 0, 1);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
#endif
}

template <int DM>
__device__ void attn_fwd_wgmma(float* __restrict__ out, int out_stride, float* __restrict__ lse,
                               const unsigned short* __restrict__ qkv16, const int* __restrict__ cu_seqlens,
                               int num_heads, int kv_heads, int head_dim) {
    constexpr int NT = AM_BK / 8;  // key tiles of 8 in a key block
    constexpr int KD = DM / 16;    // 16-wide steps over the head dims
    constexpr int NO = DM / 8;     // output tiles of 8 dims
    constexpr int TILE = AM_TILE(DM);
    constexpr unsigned int ROWS8 = 16 * DM;  // bytes from one 8-row group of a tile to the next
    unsigned short* Qs = (unsigned short*)am_smem;
    unsigned short* Ks = Qs + TILE;
    unsigned short* Vs = Ks + 2 * TILE;

    const int seq = blockIdx.z, h = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * AM_BQ;  // the longest query blocks first
    if (q0 >= len) return;
    const int g = h / (num_heads / kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
    const float sl2 = 1.4426950408889634f / sqrtf((float)head_dim);  // scale * log2(e)

    const long long ps = (long long)(num_heads + 2 * kv_heads) * DM;  // packed row stride
    const unsigned short* qb = qkv16 + (long long)start * ps + (long long)h * DM;
    const unsigned short* kb = qkv16 + (long long)start * ps + (long long)(num_heads + g) * DM;
    const unsigned short* vb = qkv16 + (long long)start * ps + (long long)(num_heads + kv_heads + g) * DM;
    copy_rows_cm<DM>(Qs, qb, ps, q0, len);
    copy_rows_cm<DM>(Ks, kb, ps, 0, len);
    copy_rows_cm<DM>(Vs, vb, ps, 0, len);
    cp_commit();
    cp_wait_all();
    proxy_fence();
    __syncthreads();

    float o[NO][4], s[NT][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
#pragma unroll
    for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    float m0 = neg_inf_f(), m1 = neg_inf_f(), l0 = 0.0f, l1 = 0.0f;
    const int i0 = q0 + warp * 16 + gr, i1 = i0 + 8;

    const int kend = min(q0 + AM_BQ, len);
    for (int k0 = 0, stage = 0; k0 < kend; k0 += AM_BK, stage ^= 1) {
        // the other stage was consumed by the last block (barrier at the loop's end): fill it
        if (k0 + AM_BK < kend) {
            copy_rows_cm<DM>(Ks + (stage ^ 1) * TILE, kb, ps, k0 + AM_BK, len);
            copy_rows_cm<DM>(Vs + (stage ^ 1) * TILE, vb, ps, k0 + AM_BK, len);
            cp_commit();
        }
        const unsigned short* Kc = Ks + stage * TILE;
        const unsigned short* Vc = Vs + stage * TILE;

        // S = Q Kᵀ over the head dims, 16 at a time
        wg_hold<NT * 4>(&s[0][0]);
        wg_fence();
#pragma unroll
        for (int kd = 0; kd < KD; ++kd) {
            wgmma_n64_ss(&s[0][0], wg_desc(Qs + kd * 128, 128, ROWS8), wg_desc(Kc + kd * 128, 128, ROWS8), kd > 0);
        }
        wg_commit();
        wg_wait0();
        wg_hold<NT * 4>(&s[0][0]);

        const bool inside = k0 + AM_BK - 1 <= q0 && k0 + AM_BK <= len;
        softmax_block<NT, NO>(s, o, m0, m1, l0, l1, inside, k0, i0, i1, len, tg, sl2);

        // O += P V, 16 keys per product: P's A fragment is two key tiles of S's accumulators
        unsigned int pa[NT / 2][4];
#pragma unroll
        for (int kk = 0; kk < NT / 2; ++kk) c_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
        wg_hold<NO * 4>(&o[0][0]);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < NT / 2; ++kk) {
            const unsigned long long dv = wg_desc(Vc + kk * 2 * (DM / 8) * 64, ROWS8, 128);
            if constexpr (DM == 64) wgmma_n64_rs_t(&o[0][0], pa[kk], dv, 1);
            else wgmma_n128_rs_t(&o[0][0], pa[kk], dv, 1);
        }
        wg_commit();
        wg_wait0();
        wg_hold<NO * 4>(&o[0][0]);
        cp_wait_all();
        proxy_fence();
        __syncthreads();  // the next stage has landed; this one is consumed
    }
    float* ob = out + (long long)start * out_stride + (long long)h * head_dim;
    finish_rows<NO>(lse, ob, out_stride, o, m0, m1, l0, l1, start, num_heads, h, i0, i1, len, head_dim, tg);
}
#endif

extern "C" __global__ void __launch_bounds__(128)
    attn_fwd_wgmma_64(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                      int num_heads, int kv_heads, int head_dim) {
#ifdef ARBOR_WGMMA
    attn_fwd_wgmma<64>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim);
#else
    __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(128)
    attn_fwd_wgmma_128(float* out, int out_stride, float* lse, const unsigned short* qkv16, const int* cu_seqlens,
                       int num_heads, int kv_heads, int head_dim) {
#ifdef ARBOR_WGMMA
    attn_fwd_wgmma<128>(out, out_stride, lse, qkv16, cu_seqlens, num_heads, kv_heads, head_dim);
#else
    __trap();
#endif
}
