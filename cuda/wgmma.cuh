// Hopper's warpgroup products (wgmma, sm_90a) for the bf16 attention kernels (attention_mma.cu,
// attention_mma_bwd.cu): prepended by the loader after common.cuh and mma.cuh (the kernels' first
// line names both), whose tiles, fragments, copies and policy conventions it builds on; emulated
// by simt/wgmma.cpp. It ends with the second product policy, WgmmaOps.

// ---------------------------------------------------------------------------------------------
// Hopper's warpgroup products (wgmma, sm_90a): the building blocks of WgmmaOps below.
// ---------------------------------------------------------------------------------------------
//
// Shared-memory tiles (64 rows x DM bf16) in wgmma's unswizzled core-matrix layout: row r's 8
// elements from column 8 c at element ((r / 8) (DM / 8) + c) 64 + (r % 8) 8 (cm_at), so every
// 8 x 8 core matrix is 128 contiguous bytes. One layout serves every operand:
//   X Yᵀ products (S = Q Kᵀ and the backward's pairs): A = X (m = row, k = head dim) and B = Y
//     (n = row of Y, k = head dim), both K-major: for head dims 16 kd .. 16 kd + 15 the descriptor
//     starts at core column 2 kd, LBO (the next 8 k) = 128 bytes, SBO (the next 8 rows) = 16 DM
//     bytes;
//   C Y products (O += P V, dQ += dS K, dV += Pᵀ dO, dK += dSᵀ Q): A = C from registers (two
//     tiles of 8 columns of the accumulators, as mma.sync's A fragment), B = Y (n = head dim,
//     k = row of Y) MN-major (transposed): for rows 16 kk .. 16 kk + 15 the descriptor starts at
//     row 16 kk, LBO (the next 8 rows) = 16 DM bytes, SBO (the next 8 head dims) = 128 bytes.
// The accumulators of m64nNk16 lay rows and columns out as mma.sync's C fragments: warp w holds
// rows 16 w .. 16 w + 15, d[4 j + e] at (gr + 8 (e >= 2), 8 j + 2 tg + (e & 1)).
// Ordering: each thread fences its landed cp.async copies for the async proxy (fence.proxy.async,
// WgmmaOps::landed) before the barrier after which wgmma reads them; wgmma.fence precedes each
// batch of products (the accumulators were touched since); every batch is waited for before its
// results are read. The emulator (simt/wgmma.cpp) checks each of these.

// Row r's segment c (8 elements from column 8 c) in a core-matrix tile of 64 x DM.
template <int DM>
__device__ __forceinline__ int cm_at(int r, int c) {
    return ((r >> 3) * (DM / 8) + c) * 64 + (r & 7) * 8;
}

// Issue the copies of rows [r0, r0 + 64) of a packed bf16 matrix (row stride `stride` elements)
// into a tile laid out by cm_at; rows at or past `len` are zero-filled. Eight consecutive threads
// take the eight rows of one core matrix: 128 contiguous bytes of shared memory. Thread t of the
// block's NT keeps segment (t / 8) % (DM / 8) and steps NT / (DM / 8) rows a copy (as copy_rows).
template <int DM, int NT>
__device__ __forceinline__ void copy_rows_cm(unsigned short* S, const unsigned short* __restrict__ x, long long stride,
                                             int r0, int len) {
    constexpr int C = DM / 8, RS = NT / C;
    static_assert(NT % (8 * C) == 0 && 64 % RS == 0, "a pass covers whole core matrices");
    const int t = (int)threadIdx.x, c = (t >> 3) % C, rt = (t & 7) | ((t / (8 * C)) << 3), r = r0 + rt;
    // (RS rows further is RS / 8 core-matrix rows further)
    unsigned short* dst = S + cm_at<DM>(rt, c);
    const unsigned short* src = x + (long long)r * stride + c * 8;
    const long long step = (long long)RS * stride;
#pragma unroll
    for (int i = 0; i < 64 / RS; ++i, src += step) {
        const bool in = r + i * RS < len;
        cp_async16(dst + i * RS * DM, in ? src : x, in ? 16 : 0);
    }
}

#if defined(ARBOR_SIMT) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ARBOR_WGMMA 1
#endif
// An entry's call of a WgmmaOps kernel: the call where wgmma exists, a trap elsewhere (AM_mma: the
// call, always)
#ifdef ARBOR_WGMMA
#define AM_wgmma(call) call
#else
#define AM_wgmma(call) __trap()
#endif
#define AM_mma(call) call

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
template <int N>
__device__ __forceinline__ void wg_hold_u32(unsigned int*) {}
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
// The same for N registers of a register operand (A): written before the wgmma.fence, kept until
// the wait.
template <int N>
__device__ __forceinline__ void wg_hold_u32(unsigned int* a) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(a[i])::"memory");
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
        : "l"(da), "l"(db), "r"(scale_d)
        : "memory");
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
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d)
        : "memory");
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
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d)
        : "memory");
#endif
}
#endif  // ARBOR_WGMMA

#ifdef ARBOR_WGMMA
// The warpgroup's wgmma (sm_90a): tiles laid out by cm_at, operands read through descriptors.
// NT (the product's columns over 8) must be 8 and NO 8 or 16: m64n64k16 and m64n128k16.
struct WgmmaOps {
    template <int DM, int NT>
    static AM_FN void load(unsigned short* S, const unsigned short* x, long long stride, int r0, int len) {
        copy_rows_cm<DM, NT>(S, x, stride, r0, len);
    }
    static AM_FN void landed() { proxy_fence(); }
    // (the warpgroup's 64-row tile of a region of Q tiles, rows r0 of the warp)
    template <int DM>
    struct QFrags {
        const unsigned short* q;
        AM_FN void load(const unsigned short* Qs, int r0, int) { q = Qs + (r0 >> 6) * AM_TILE(DM); }
    };
    // one batch of KD products d (+)= X Yᵀ, head dims 16 at a time
    template <int DM>
    static AM_FN void xyt(float* d, const unsigned short* X, const unsigned short* Y) {
#pragma unroll
        for (int kd = 0; kd < DM / 16; ++kd) {
            wgmma_n64_ss(d, wg_desc(X + kd * 128, 128, 16 * DM), wg_desc(Y + kd * 128, 128, 16 * DM), kd > 0);
        }
    }
    template <int DM, int NT>
    static AM_FN void scores(float (*s)[4], const QFrags<DM>& q, const unsigned short* K, int) {
        static_assert(NT == 8, "wgmma scores are m64n64");
        wg_hold<NT * 4>(&s[0][0]);
        wg_fence();
        xyt<DM>(&s[0][0], q.q, K);
        wg_commit();
        wg_wait0();
        wg_hold<NT * 4>(&s[0][0]);
    }
    // (the warpgroup's 64-row tiles of X1 and X2: rows r0 of the warp)
    template <int DM, int NT>
    static AM_FN void products2(float (*s)[4], float (*t)[4], const unsigned short* X1, const unsigned short* Y1,
                                const unsigned short* X2, const unsigned short* Y2, int r0, int) {
        static_assert(NT == 8, "wgmma row products are m64n64");
        const int at = (r0 >> 6) * AM_TILE(DM);
        wg_hold<NT * 4>(&s[0][0]);
        wg_hold<NT * 4>(&t[0][0]);
        wg_fence();
        xyt<DM>(&s[0][0], X1 + at, Y1);
        xyt<DM>(&t[0][0], X2 + at, Y2);
        wg_commit();
        wg_wait0();
        wg_hold<NT * 4>(&s[0][0]);
        wg_hold<NT * 4>(&t[0][0]);
    }
    template <int NO, int NT>
    static AM_FN void accumulate(float (*acc)[4], float (*c)[4], const unsigned short* Y, int) {
        static_assert(NT == 8 && (NO == 8 || NO == 16), "wgmma accumulations are m64n64k16 or m64n128k16");
        constexpr int DM = NO * 8;
        unsigned int a[NT / 2][4];
#pragma unroll
        for (int kk = 0; kk < NT / 2; ++kk) c_to_a(a[kk], c[2 * kk], c[2 * kk + 1]);
        wg_hold_u32<NT * 2>(&a[0][0]);
        wg_hold<NO * 4>(&acc[0][0]);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < NT / 2; ++kk) {
            const unsigned long long dy = wg_desc(Y + kk * 2 * (DM / 8) * 64, 16 * DM, 128);
            if constexpr (NO == 8) wgmma_n64_rs_t(&acc[0][0], a[kk], dy, 1);
            else wgmma_n128_rs_t(&acc[0][0], a[kk], dy, 1);
        }
        wg_commit();
        wg_wait0();
        wg_hold<NO * 4>(&acc[0][0]);
        wg_hold_u32<NT * 2>(&a[0][0]);
    }
};
#endif
