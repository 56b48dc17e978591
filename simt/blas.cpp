// arbor SIMT host emulator: cuBLAS as far as arbor uses it: handles, their stream and math mode,
// and cublasGemmEx (f32 or bf16 operands, f32 accumulation, tf32 on request), run on the handle's
// stream like any other device operation (driver.cpp), its operands checked against the
// allocations.
#include <algorithm>
#include <string>
#include <vector>

#include "driver.h"
// the kernels' own bf16 conversions (round to nearest even, NaN kept): cuBLAS's bf16 output rounds so
#include "../cuda/common.cuh"

using namespace simt::driver;

// ---------------------------------------------------------------------------------------------
// cuBLAS: cublasGemmEx with f32 accumulation
// ---------------------------------------------------------------------------------------------

namespace {
struct Blas {
    void* stream = nullptr;
};

float tf32(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    u += 0x1000u;
    return __uint_as_float(u & ~0x1fffu);
}
enum : int { R_32F = 0, R_16BF = 14 };
enum : int { B_OK = 0, B_INVALID_VALUE = 7, B_EXECUTION_FAILED = 13, B_NOT_SUPPORTED = 15 };
}  // namespace

API int cublasCreate_v2(void** h) {
    *h = new Blas();
    return B_OK;
}
API int cublasDestroy_v2(void* h) {
    delete static_cast<Blas*>(h);
    return B_OK;
}
API int cublasSetStream_v2(void* h, void* s) {
    static_cast<Blas*>(h)->stream = s;
    return B_OK;
}
API int cublasGetStream_v2(void* h, void** s) {
    *s = static_cast<Blas*>(h)->stream;
    return B_OK;
}
API int cublasSetWorkspace_v2(void*, void*, size_t) { return B_OK; }
API int cublasSetMathMode(void*, int) { return B_OK; }
API int cublasGetMathMode(void*, int* m) {
    *m = 0;
    return B_OK;
}
API int cublasSetPointerMode_v2(void*, int mode) { return mode == 0 ? B_OK : B_NOT_SUPPORTED; }
API int cublasGetPointerMode_v2(void*, int* mode) {
    *mode = 0;
    return B_OK;
}

// C (m x n, column major, ldc) = alpha op(A) op(B) + beta C, op(A) m x k, op(B) k x n.
API int cublasGemmEx(void* h, int transa, int transb, int m, int n, int k, const void* alpha, const void* A,
                     int atype, int lda, const void* B, int btype, int ldb, const void* beta, void* C, int ctype,
                     int ldc, int compute, int /*algo*/) {
    const bool ta = transa != 0, tb = transb != 0;
    if (m < 0 || n < 0 || k < 0) return B_INVALID_VALUE;
    if (lda < (ta ? std::max(1, k) : std::max(1, m)) || ldb < (tb ? std::max(1, n) : std::max(1, k)) ||
        ldc < std::max(1, m))
        return B_INVALID_VALUE;
    const bool f32 = atype == R_32F && btype == R_32F && ctype == R_32F;
    const bool bf = atype == R_16BF && btype == R_16BF && (ctype == R_16BF || ctype == R_32F);
    const bool tf = compute == 77;
    if (!(compute == 68 || tf) || !(f32 || bf) || (tf && !f32)) return B_NOT_SUPPORTED;
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    Blas* bl = static_cast<Blas*>(h);
    const int r = enqueue(bl->stream, [=]() -> std::string {
        counts[C_GEMMS] += 1;
        if (m == 0 || n == 0) return "";
        const size_t ea = atype == R_32F ? 4 : 2, ec = ctype == R_32F ? 4 : 2;
        const size_t a_cols = ta ? m : k, a_rows = ta ? k : m, b_cols = tb ? k : n, b_rows = tb ? n : k;
        if (k > 0 && !inside((uintptr_t)A, ((a_cols - 1) * lda + a_rows) * ea))
            return range_error("cublasGemmEx's A", (uintptr_t)A, ((a_cols - 1) * lda + a_rows) * ea);
        if (k > 0 && !inside((uintptr_t)B, ((b_cols - 1) * ldb + b_rows) * ea))
            return range_error("cublasGemmEx's B", (uintptr_t)B, ((b_cols - 1) * ldb + b_rows) * ea);
        if (!inside((uintptr_t)C, ((size_t)(n - 1) * ldc + m) * ec))
            return range_error("cublasGemmEx's C", (uintptr_t)C, ((size_t)(n - 1) * ldc + m) * ec);
        auto load = [&](const void* base, size_t idx) {
            float v = atype == R_32F ? static_cast<const float*>(base)[idx]
                                     : bf16_to_f32(static_cast<const unsigned short*>(base)[idx]);
            return tf ? tf32(v) : v;
        };
        std::vector<float> a((size_t)m * k), b((size_t)n * k);  // op(A) by rows, op(B) by columns
        for (int i = 0; i < m; ++i)
            for (int l = 0; l < k; ++l)
                a[(size_t)i * k + l] = load(A, ta ? (size_t)i * lda + l : (size_t)l * lda + i);
        for (int j = 0; j < n; ++j)
            for (int l = 0; l < k; ++l)
                b[(size_t)j * k + l] = load(B, tb ? (size_t)l * ldb + j : (size_t)j * ldb + l);
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                const float* ar = &a[(size_t)i * k];
                const float* bc = &b[(size_t)j * k];
                // eight running sums (the vector unit's width), then their sum
                float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                int l = 0;
                for (; l + 8 <= k; l += 8)
                    for (int u = 0; u < 8; ++u) part[u] += ar[l + u] * bc[l + u];
                float acc = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
                for (; l < k; ++l) acc += ar[l] * bc[l];
                const size_t at = (size_t)j * ldc + i;
                if (ctype == R_32F) {
                    float* c = static_cast<float*>(C);
                    c[at] = al * acc + (be == 0.0f ? 0.0f : be * c[at]);
                } else {
                    unsigned short* c = static_cast<unsigned short*>(C);
                    c[at] = f32_to_bf16(al * acc + (be == 0.0f ? 0.0f : be * bf16_to_f32(c[at])));
                }
            }
        return "";
    });
    return r == OK ? B_OK : B_EXECUTION_FAILED;
}
