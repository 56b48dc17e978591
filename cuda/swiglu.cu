// SwiGLU activation (CPU: src/tensor/cpu/ops.rs swiglu_forward / swiglu_backward).
//
// ABI (I = intermediate size; gate_up rows are [gate (I) | up (I)], width 2I):
//
// swiglu_fwd_f32 / swiglu_fwd_bf16
//   (T* act, const T* gate_up, int n, int inter)
//   gate_up: [N, 2I] T; act: [N, I] T.
//   act[i,j] = g * sigmoid(g) * u,  g = gate_up[i, j], u = gate_up[i, I + j],
//   sigmoid(g) = 1 / (1 + exp(-g)).
//   Launch: grid = ceil(n * ceil(inter / 8) / 256), block = 256, no dynamic shared memory: a
//   thread per 8 consecutive columns of a row, with 16-byte loads and stores when inter % 8 == 0
//   and every pointer is 16-byte aligned (else one value at a time; the same values).
// swiglu_fwd_f32_o16: swiglu_fwd_f32 with act in bf16 (unsigned short, rounded to nearest even as
//   it is written: the rows the down projection's bf16 product reads).
//
// swiglu_bwd_f32 / swiglu_bwd_bf16
//   (float* dgate_up, const float* dact, const T* gate_up, int n, int inter)
//   dgate_up: [N, 2I] f32 (OVERWRITTEN, like the CPU); dact: [N, I] f32; gate_up: [N, 2I] T.
//   s = sigmoid(g);  d gate = dact * u * s * (1 + g * (1 - s));  d up = dact * g * s.
//   Launch: as swiglu_fwd_f32.
// swiglu_bwd_f32_o16: swiglu_bwd_f32 with dgate_up in bf16 (rounded to nearest even as it is
//   written: the dy of the gate|up projection's backward products, which read it as it is).
// swiglu_bwd_bf16_o16: swiglu_bwd_bf16 with dgate_up in bf16 (the training step with bf16
//   products: the gate|up projection writes gate_up in bf16, swiglu_fwd_bf16 reads it).

__device__ __forceinline__ float sigmoid_f(float g) { return 1.0f / (1.0f + expf(-g)); }

// Thread g of the grid: row g / ceil(I / 8), columns 8 (g % ceil(I / 8)) .. + 7 (fewer at a row's
// end); `vec`: 16-byte accesses (I % 8 == 0 and every pointer 16-byte aligned), else one value at
// a time. Either gives the same values.
struct SwigluCols {
    long long row;
    int j0, j1;
    bool live;
};
__device__ __forceinline__ SwigluCols swiglu_cols(int n, int inter) {
    const int per_row = (inter + 7) / 8;
    const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    SwigluCols c;
    c.live = g < (long long)n * per_row;
    c.row = g / per_row;
    c.j0 = (int)(g - c.row * per_row) * 8;
    c.j1 = min(c.j0 + 8, inter);
    return c;
}

template <typename T, typename TA = T>
__device__ void swiglu_fwd(TA* __restrict__ act, const T* __restrict__ gate_up, int n, int inter) {
    const SwigluCols c = swiglu_cols(n, inter);
    if (!c.live) return;
    const T* gr = gate_up + c.row * 2 * inter;
    TA* ar = act + c.row * inter;
    if ((inter & 7) == 0 && aligned16(act) && aligned16(gate_up)) {
        float g[8], u[8], a[8];
        load8_f(gr + c.j0, g);
        load8_f(gr + inter + c.j0, u);
#pragma unroll
        for (int k = 0; k < 8; ++k) a[k] = g[k] * sigmoid_f(g[k]) * u[k];
        store8_f(ar + c.j0, a);
        return;
    }
    for (int j = c.j0; j < c.j1; ++j) {
        const float g = load_f(gr + j), u = load_f(gr + inter + j);
        store_f(ar + j, g * sigmoid_f(g) * u);
    }
}

extern "C" __global__ void swiglu_fwd_f32(float* act, const float* gate_up, int n, int inter) {
    swiglu_fwd<float>(act, gate_up, n, inter);
}

extern "C" __global__ void swiglu_fwd_bf16(unsigned short* act, const unsigned short* gate_up, int n, int inter) {
    swiglu_fwd<unsigned short>(act, gate_up, n, inter);
}

extern "C" __global__ void swiglu_fwd_f32_o16(unsigned short* act, const float* gate_up, int n, int inter) {
    swiglu_fwd<float, unsigned short>(act, gate_up, n, inter);
}

// d gate and d up of one value
__device__ __forceinline__ void swiglu_grads(float a, float g, float u, float& dg, float& du) {
    const float s = sigmoid_f(g);
    dg = a * u * s * (1.0f + g * (1.0f - s));
    du = a * g * s;
}

template <typename T, typename TD = float>
__device__ void swiglu_bwd(TD* __restrict__ dgate_up, const float* __restrict__ dact,
                           const T* __restrict__ gate_up, int n, int inter) {
    const SwigluCols c = swiglu_cols(n, inter);
    if (!c.live) return;
    const long long o2 = c.row * 2 * inter, o1 = c.row * inter;
    if ((inter & 7) == 0 && aligned16(dgate_up) && aligned16(dact) && aligned16(gate_up)) {
        float g[8], u[8], a[8], dg[8], du[8];
        load8_f(gate_up + o2 + c.j0, g);
        load8_f(gate_up + o2 + inter + c.j0, u);
        load8_f(dact + o1 + c.j0, a);
#pragma unroll
        for (int k = 0; k < 8; ++k) swiglu_grads(a[k], g[k], u[k], dg[k], du[k]);
        store8_f(dgate_up + o2 + c.j0, dg);
        store8_f(dgate_up + o2 + inter + c.j0, du);
        return;
    }
    for (int j = c.j0; j < c.j1; ++j) {
        float dg, du;
        swiglu_grads(dact[o1 + j], load_f(gate_up + o2 + j), load_f(gate_up + o2 + inter + j), dg, du);
        store_f(dgate_up + o2 + j, dg);
        store_f(dgate_up + o2 + inter + j, du);
    }
}

extern "C" __global__ void swiglu_bwd_f32(float* dgate_up, const float* dact, const float* gate_up, int n,
                                          int inter) {
    swiglu_bwd<float>(dgate_up, dact, gate_up, n, inter);
}

extern "C" __global__ void swiglu_bwd_f32_o16(unsigned short* dgate_up, const float* dact, const float* gate_up,
                                              int n, int inter) {
    swiglu_bwd<float, unsigned short>(dgate_up, dact, gate_up, n, inter);
}

extern "C" __global__ void swiglu_bwd_bf16(float* dgate_up, const float* dact, const unsigned short* gate_up,
                                           int n, int inter) {
    swiglu_bwd<unsigned short>(dgate_up, dact, gate_up, n, inter);
}

extern "C" __global__ void swiglu_bwd_bf16_o16(unsigned short* dgate_up, const float* dact,
                                               const unsigned short* gate_up, int n, int inter) {
    swiglu_bwd<unsigned short, unsigned short>(dgate_up, dact, gate_up, n, inter);
}
