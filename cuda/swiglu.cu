// SwiGLU activation (CPU: src/tensor/cpu/ops.rs swiglu_forward / swiglu_backward).
//
// ABI (I = intermediate size; gate_up rows are [gate (I) | up (I)], width 2I):
//
// swiglu_fwd_f32 / swiglu_fwd_bf16
//   (T* act, const T* gate_up, int n, int inter)
//   gate_up: [N, 2I] T; act: [N, I] T.
//   act[i,j] = g * sigmoid(g) * u,  g = gate_up[i, j], u = gate_up[i, I + j],
//   sigmoid(g) = 1 / (1 + exp(-g)).
//   Launch: grid = (n, ceil(inter / 256)), block = 256, no dynamic shared memory (rows on x, whose
//   limit is 2^31 - 1: y would stop at 65,535 tokens).
// swiglu_fwd_f32_o16: swiglu_fwd_f32 with act in bf16 (unsigned short, rounded to nearest even as
//   it is written: the rows the down projection's bf16 product reads).
//
// swiglu_bwd_f32 / swiglu_bwd_bf16
//   (float* dgate_up, const float* dact, const T* gate_up, int n, int inter)
//   dgate_up: [N, 2I] f32 (OVERWRITTEN, like the CPU); dact: [N, I] f32; gate_up: [N, 2I] T.
//   s = sigmoid(g);  d gate = dact * u * s * (1 + g * (1 - s));  d up = dact * g * s.
//   Launch: grid = (n, ceil(inter / 256)), block = 256, no dynamic shared memory (rows on x, whose
//   limit is 2^31 - 1: y would stop at 65,535 tokens).
// swiglu_bwd_f32_o16: swiglu_bwd_f32 with dgate_up in bf16 (rounded to nearest even as it is
//   written: the dy of the gate|up projection's backward products, which read it as it is).
// swiglu_bwd_bf16_o16: swiglu_bwd_bf16 with dgate_up in bf16 (the training step with bf16
//   products: the gate|up projection writes gate_up in bf16, swiglu_fwd_bf16 reads it).

__device__ __forceinline__ float sigmoid_f(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T, typename TA = T>
__device__ void swiglu_fwd(TA* __restrict__ act, const T* __restrict__ gate_up, int n, int inter) {
    const int row = blockIdx.x;
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= n || j >= inter) return;
    const T* gr = gate_up + (long long)row * 2 * inter;
    const float g = load_f(gr + j), u = load_f(gr + inter + j);
    store_f(act + (long long)row * inter + j, g * sigmoid_f(g) * u);
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

template <typename T, typename TD = float>
__device__ void swiglu_bwd(TD* __restrict__ dgate_up, const float* __restrict__ dact,
                           const T* __restrict__ gate_up, int n, int inter) {
    const int row = blockIdx.x;
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= n || j >= inter) return;
    const long long o2 = (long long)row * 2 * inter;
    const float g = load_f(gate_up + o2 + j), u = load_f(gate_up + o2 + inter + j);
    const float a = dact[(long long)row * inter + j];
    const float s = sigmoid_f(g);
    store_f(dgate_up + o2 + j, a * u * s * (1.0f + g * (1.0f - s)));
    store_f(dgate_up + o2 + inter + j, a * g * s);
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
