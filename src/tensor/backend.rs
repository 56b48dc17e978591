//! The operations the model is written in, per backend.
//!
//! The decoder's forward and backward (`crate::model::transformer`) are written once, generic over
//! [`Backend`]; [`Cpu`](crate::tensor::cpu::Cpu) runs them on host slices (the specification) and
//! the CUDA backend (`crate::cuda::Gpu`, feature `cuda`) on device buffers with arbor's own kernels
//! and cuBLAS. A backend supplies f32 storage, views of ranges of it, activation storage for what
//! only products read (f32, or bf16 where the products take bf16), a packed batch in its own
//! memory, and one method per operation. Shapes follow the CPU functions each method names:
//! N tokens (packed), C hidden, V vocab; every row-major buffer is contiguous.

use crate::attention::{AttnSaved, AttnShape};
use crate::error::Result;
use crate::parallel::TpGroup;
use crate::tensor::cpu::ops::RopeTable;
use crate::tensor::shape::GemmShape;
use std::ops::Range;

/// A packed batch as the operations read it: sequences of different lengths laid end to end, N
/// tokens in all, as host slices (the model's `Batch` lends its vectors through `Batch::packed`).
#[derive(Debug, Clone, Copy)]
pub struct PackedBatch<'a> {
    /// `[N]` input tokens.
    pub tokens: &'a [u32],
    /// `[N]` the token whose log-probability is read at each position.
    pub targets: &'a [u32],
    /// `[N]` positions, restarting at 0 in each sequence.
    pub positions: &'a [u32],
    /// [S + 1] sequence s occupies tokens `seq_starts[s]..seq_starts[s + 1]`.
    pub seq_starts: &'a [usize],
}

impl PackedBatch<'_> {
    /// Number of sequences S.
    pub fn num_seqs(&self) -> usize {
        self.seq_starts.len().saturating_sub(1)
    }

    /// Longest sequence.
    pub fn max_seq_len(&self) -> usize {
        self.seq_starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
    }
}

/// Per-row outputs of [`Backend::logprob_forward`]: log-sum-exp, log p(target) and entropy of
/// each row of logits.
pub struct LogitStats<T> {
    pub lse: T,
    pub logp: T,
    pub entropy: T,
}

/// Per-row inputs of [`Backend::logprob_backward`]: from the loss (views `G`), `g` = ∂L/∂logp
/// and, when the loss has an entropy term, ∂L/∂H as `ent.0`; from the forward (views `S`), the
/// row log-sum-exp `lse` and the entropy H as `ent.1`. Two view types, since the loss's gradients
/// and the forward's outputs are borrowed from different places for different lifetimes.
pub struct LogprobGrad<G, S> {
    pub lse: S,
    pub g: G,
    pub ent: Option<(G, S)>,
}

/// A place the model's operations run.
pub trait Backend {
    /// Owned f32 storage.
    type Buf;
    /// A read-only view of a range of a [`Backend::Buf`].
    type R<'a>
    where
        Self: 'a;
    /// A writable view of a range of a [`Backend::Buf`].
    type M<'a>
    where
        Self: 'a;
    /// Storage of activations that only matrix products and elementwise kernels read (normed
    /// rows, the gate|up projection, the SwiGLU output): values in the type the backend's
    /// products take (f32 on the CPU; on a GPU with bf16 products, bf16, written so by the
    /// kernel or product that makes them and never rounded again).
    type Act;
    /// A read-only view of a range of values of a [`Backend::Act`].
    type ActR<'a>
    where
        Self: 'a;
    /// A writable view of a range of values of a [`Backend::Act`].
    type ActM<'a>
    where
        Self: 'a;
    /// A packed batch (tokens, targets, positions, sequence starts) in this backend's memory.
    type Batch<'a>;
    /// The RoPE cos/sin tables in this backend's memory.
    type Rope;

    /// A short name for messages ("cpu", "cuda:0 (NVIDIA H100)").
    fn name(&self) -> String;

    // ------------------------------------------------------------------ storage
    /// An empty buffer.
    fn empty(&self) -> Result<Self::Buf>;
    /// Elements of `buf`.
    fn len(buf: &Self::Buf) -> usize;
    /// Grow `buf` to at least `n` elements (contents need not survive; new ones need not be zero).
    fn grow(&self, buf: &mut Self::Buf, n: usize) -> Result<()>;
    /// A buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// Copy `buf[..out.len()]` to the host.
    fn download(&self, buf: &Self::Buf, out: &mut [f32]) -> Result<()>;
    /// View of `buf[r]`.
    fn r<'a>(buf: &'a Self::Buf, r: Range<usize>) -> Self::R<'a>;
    /// Writable view of `buf[r]`.
    fn m<'a>(buf: &'a mut Self::Buf, r: Range<usize>) -> Self::M<'a>;
    /// Sub-view `x[r]` of a view.
    fn sub_r<'a>(x: &Self::R<'a>, r: Range<usize>) -> Self::R<'a>;
    /// Writable sub-view `x[r]` of a writable view.
    fn sub_m<'a, 'b: 'a>(x: &'a mut Self::M<'b>, r: Range<usize>) -> Self::M<'a>;
    /// An empty activation buffer.
    fn act_empty(&self) -> Result<Self::Act>;
    /// Whether activations are stored in f32 now (then an f32 buffer is also an activation, and
    /// a gradient the products read may be made in place).
    fn acts_are_f32(&self) -> bool;
    /// Grow `buf` to at least `n` values of the type the products take now (reallocated, contents
    /// lost, when it holds fewer or another type).
    fn act_grow(&self, buf: &mut Self::Act, n: usize) -> Result<()>;
    /// Bytes held by `buf`.
    fn act_bytes(buf: &Self::Act) -> usize;
    /// Copy `buf[..out.len()]` to the host as f32.
    fn act_download(&self, buf: &Self::Act, out: &mut [f32]) -> Result<()>;
    /// View of `buf[r]` (a range of values).
    fn act_r<'a>(buf: &'a Self::Act, r: Range<usize>) -> Self::ActR<'a>;
    /// Writable view of `buf[r]`.
    fn act_m<'a>(buf: &'a mut Self::Act, r: Range<usize>) -> Self::ActM<'a>;
    /// Sub-view `x[r]` of a view.
    fn act_sub_r<'a>(x: &Self::ActR<'a>, r: Range<usize>) -> Self::ActR<'a>;
    /// An f32 view read where an activation is (an activation view of f32 storage).
    fn as_act<'a>(x: Self::R<'a>) -> Self::ActR<'a>;
    /// An f32 view written where an activation is (kept in f32: e.g. the final norm's output,
    /// which a value head reads in f32).
    fn as_act_m<'a>(x: Self::M<'a>) -> Self::ActM<'a>;
    /// A batch in this backend's memory (validated by the caller).
    fn batch<'a>(&self, batch: PackedBatch<'a>) -> Result<Self::Batch<'a>>;
    /// The RoPE tables in this backend's memory.
    fn rope(&self, table: &RopeTable) -> Result<Self::Rope>;
    /// dst = src (equal lengths).
    fn copy(&self, dst: Self::M<'_>, src: Self::R<'_>) -> Result<()>;
    /// dst = 0.
    fn zero(&self, dst: Self::M<'_>) -> Result<()>;
    /// dst += src (equal lengths).
    fn add(&self, dst: Self::M<'_>, src: Self::R<'_>) -> Result<()>;
    /// Floats of attention scratch for `n` tokens.
    fn attn_scratch_len(&self, shape: AttnShape, n: usize) -> usize;
    /// Largest number of logit elements one LM-head chunk may hold.
    fn head_chunk_elems(&self) -> usize;
    /// Wait until every queued operation has finished (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    /// Sum `x` over a tensor-parallel group (row-parallel partial results).
    fn all_reduce_tp(&self, x: Self::M<'_>, group: &TpGroup) -> Result<()>;

    // ------------------------------------------------------------------ GEMM (row-major)
    /// c[m, n] (+)= a[m, k] · b[n, k]ᵀ.
    fn matmul_nt(&self, c: Self::M<'_>, a: Self::R<'_>, b: Self::R<'_>, shape: GemmShape, acc: bool) -> Result<()>;
    /// [`Backend::matmul_nt`] with its first operand an activation (see [`Backend::Act`]).
    fn matmul_nt_act(
        &self,
        c: Self::M<'_>,
        a: Self::ActR<'_>,
        b: Self::R<'_>,
        shape: GemmShape,
        acc: bool,
    ) -> Result<()>;
    /// c[m, n] = a[m, k] · b[n, k]ᵀ into activation storage (a product whose result only
    /// elementwise kernels read: the gate|up projection; with bf16 products it is written in bf16,
    /// rounded from the f32 accumulators).
    fn matmul_nt_to_act(&self, c: Self::ActM<'_>, a: Self::ActR<'_>, b: Self::R<'_>, shape: GemmShape) -> Result<()>;
    /// c[m, n] (+)= a[m, k] · b[k, n].
    fn matmul_nn(&self, c: Self::M<'_>, a: Self::R<'_>, b: Self::R<'_>, shape: GemmShape, acc: bool) -> Result<()>;
    /// c[m, n] (+)= a[k, m]ᵀ · b[k, n].
    fn matmul_tn(&self, c: Self::M<'_>, a: Self::R<'_>, b: Self::R<'_>, shape: GemmShape, acc: bool) -> Result<()>;
    /// The two products of a linear layer's backward (y[m, n] = x[m, k] · w[n, k]ᵀ), in this order:
    /// dx[m, k] = dy[m, n] · w[n, k] (overwritten), then dw[n, k] += dy[m, n]ᵀ · x[m, k]. One call,
    /// so that a backend whose products take rounded operands rounds dy once for both. dy and x are
    /// activation views (see [`Backend::Act`]; an f32 view through [`Backend::as_act`]).
    fn linear_backward(
        &self,
        dx: Self::M<'_>,
        dw: Self::M<'_>,
        dy: Self::ActR<'_>,
        w: Self::R<'_>,
        x: Self::ActR<'_>,
        dims: (usize, usize, usize),
    ) -> Result<()>;

    // ------------------------------------------------------------------ layers
    /// `out[i, :] = table[tokens[i], :]`.
    fn embedding_forward(&self, out: Self::M<'_>, table: Self::R<'_>, batch: &Self::Batch<'_>, c: usize) -> Result<()>;
    /// `dtable[tokens[i], :] += dout[i, :]`.
    fn embedding_backward(
        &self,
        dtable: Self::M<'_>,
        dout: Self::R<'_>,
        batch: &Self::Batch<'_>,
        c: usize,
    ) -> Result<()>;
    /// y = x · rstd · w row by row; `rstd[i]` = 1/sqrt(mean(x_i²) + eps) (y, which only products
    /// read, in activation storage).
    fn rmsnorm_forward(
        &self,
        y: Self::ActM<'_>,
        rstd: Self::M<'_>,
        x: Self::R<'_>,
        w: Self::R<'_>,
        eps: f32,
    ) -> Result<()>;
    /// dx += ∂/∂x, dw += ∂/∂w of the forward above.
    fn rmsnorm_backward(
        &self,
        dx: Self::M<'_>,
        dw: Self::M<'_>,
        dy: Self::R<'_>,
        x: Self::R<'_>,
        w: Self::R<'_>,
        rstd: Self::R<'_>,
    ) -> Result<()>;
    /// Per-head RMSNorm in place (Qwen3's q_norm / k_norm): of each row of `x` ([N, row_stride],
    /// the view starting at the first head), the first `heads` heads of `w.len()` values become
    /// x·rstd·w; `rstd` [N·heads] = 1/sqrt(mean(x²) + eps) per head, `raw` [N·heads·d] keeps the
    /// inputs for the backward (none at inference). N = `rstd.len() / heads`.
    #[allow(clippy::too_many_arguments)]
    fn head_norm_forward(
        &self,
        x: Self::M<'_>,
        raw: Option<Self::M<'_>>,
        rstd: Self::M<'_>,
        w: Self::R<'_>,
        row_stride: usize,
        heads: usize,
        eps: f32,
    ) -> Result<()>;
    /// The backward of [`Backend::head_norm_forward`]: `dx` (strided as `x`) holds ∂L/∂y and is
    /// overwritten with ∂L/∂x; dw += ∂L/∂w (summed over rows and heads in a fixed order).
    #[allow(clippy::too_many_arguments)]
    fn head_norm_backward(
        &self,
        dx: Self::M<'_>,
        dw: Self::M<'_>,
        raw: Self::R<'_>,
        rstd: Self::R<'_>,
        w: Self::R<'_>,
        row_stride: usize,
        heads: usize,
    ) -> Result<()>;
    /// out[i, :] += bias.
    fn add_bias(&self, out: Self::M<'_>, bias: Self::R<'_>) -> Result<()>;
    /// dbias += Σ_i dout[i, :].
    fn bias_backward(&self, dbias: Self::M<'_>, dout: Self::R<'_>) -> Result<()>;
    /// Rotate the first `n_heads` heads of each row ([N, row_stride]) by its position; `inverse`
    /// is the backward.
    fn rope_apply(
        &self,
        x: Self::M<'_>,
        row_stride: usize,
        n_heads: usize,
        batch: &Self::Batch<'_>,
        table: &Self::Rope,
        inverse: bool,
    ) -> Result<()>;
    /// Causal GQA attention over the packed q|k|v rows; lse [N, H].
    fn attention_forward(
        &self,
        out: Self::M<'_>,
        lse: Self::M<'_>,
        scratch: Self::M<'_>,
        qkv: Self::R<'_>,
        batch: &Self::Batch<'_>,
        shape: AttnShape,
    ) -> Result<()>;
    /// dqkv (overwritten) of the attention above, from what its forward read and wrote.
    fn attention_backward(
        &self,
        dqkv: Self::M<'_>,
        scratch: Self::M<'_>,
        dout: Self::R<'_>,
        saved: AttnSaved<Self::R<'_>>,
        batch: &Self::Batch<'_>,
        shape: AttnShape,
    ) -> Result<()>;
    /// act = silu(gate) · up from gate_up rows [gate | up] (both in activation storage).
    fn swiglu_forward(&self, act: Self::ActM<'_>, gate_up: Self::ActR<'_>, inter: usize) -> Result<()>;
    /// dgate_up (overwritten; read only by the gate|up projection's backward products, so an
    /// activation) of the forward above.
    fn swiglu_backward(
        &self,
        dgate_up: Self::ActM<'_>,
        dact: Self::R<'_>,
        gate_up: Self::ActR<'_>,
        inter: usize,
    ) -> Result<()>;
    /// Per row of logits z ([rows, V], rows = `rows.len()` of the batch's targets): log-sum-exp,
    /// log p(target) and entropy.
    fn logprob_forward(
        &self,
        z: Self::R<'_>,
        v: usize,
        batch: &Self::Batch<'_>,
        rows: Range<usize>,
        out: LogitStats<Self::M<'_>>,
    ) -> Result<()>;
    /// ∂L/∂z for `grad.g` = ∂L/∂logp and `grad.ent` = (∂L/∂H, H): into `dz` (activation
    /// storage, the operand of the head's backward products; `z` is left as it is), or over `z`
    /// in place when `dz` is `None`.
    fn logprob_backward(
        &self,
        z: Self::M<'_>,
        dz: Option<Self::ActM<'_>>,
        v: usize,
        batch: &Self::Batch<'_>,
        rows: Range<usize>,
        grad: LogprobGrad<Self::R<'_>, Self::R<'_>>,
    ) -> Result<()>;
}

/// Logit elements per LM-head chunk on a GPU of `total_mem` bytes (`cuda::backend`, and the
/// memory plan, `train::memory_plan`): a sixteenth of its memory, at most 4 GiB of f32 (an 80 GB
/// GPU: a micro-batch of up to 7,067 tokens at Qwen2's 151,936-token vocabulary, 4 × 1024 in the
/// 0.5B benchmark, keeps its logits from the forward for the backward, which then skips the
/// recompute product: 2·rows·V·C FLOPs, a tenth of the 0.5B step's); larger micro-batches
/// recompute chunk by chunk.
pub fn gpu_head_chunk(total_mem: u64) -> usize {
    (total_mem / 16 / 4).clamp(1 << 24, 1 << 30) as usize
}

/// Rows one GPU decode step may hold (`cuda::generate::MAX_ROWS`: a prefill's prompt chunks wait
/// for the next step beyond it; the memory plan sizes the decode buffers by it).
pub const GPU_DECODE_ROWS: usize = 8192;
