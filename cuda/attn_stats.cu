// Attention statistics pass for AttnRL (FCI) and the attention-rhythm credit (look-back, WAAD,
// FAI). CPU: src/attention/stats/{mod.rs,pass.rs}; definitions: shared/ALGORITHMS.md §1, §7.
// Run after the normal forward of a layer, from its post-RoPE q|k rows and its lse:
//   P[t, s] = exp(scale * q_t . k_s - lse[t, h]),  scale = 1 / sqrt(head_dim), causal (s <= t),
// recomputed tile by tile (64 query rows x 64 keys): memory O(N) per head, never N x N.
// Token indices t, s below are LOCAL to their sequence (0 = its first token); "global" means
// the packed-batch index start + t. Sequence i: tokens [cu_seqlens[i], cu_seqlens[i+1]).
//
// Per-sequence description seq_info: int [n_seq, 4] = (r, kmax, fci_key_lo, fci_row_lo):
//   r          = first response token (rows r..len-1 are the response, T = len - r; r <= len).
//   kmax       = largest step whose FCI may be non-zero (S - 1, or the end-of-thinking step);
//                pass -1 when the sequence has no FCI (no step bounds).
//   fci_key_lo = bounds[2] (first token of step 2), fci_row_lo = bounds[2 + delta] (first row
//                whose step can feed an FCI; = len when 2 + delta >= S). Both only bound the work
//                (any smaller value is correct, just slower); pass len for sequences without FCI.
// Per-token arrays (global index): tok_step [N] int = local step index of the token (-1 when its
//   sequence has no FCI), step_inv [N] f32 = 1 / |S_step(token)| (0 when none).
// Step bounds (for the reduction): bounds_off [n_seq + 1], bounds: int [bounds_off[n_seq]]; the
//   local bounds of sequence i are bounds[bounds_off[i] .. bounds_off[i+1]) (S_i + 1 values from 0
//   to len, or none when the sequence has no FCI), so step k of sequence i is
//   [bounds[bounds_off[i] + k], bounds[bounds_off[i] + k + 1]).
//
// ===== 1. attn_stats_{32,64,128}_{f32,bf16} (DM = largest supported head_dim, like attention)
//   (const T* q, int q_stride, const T* k, int k_stride, const float* lse, const int* cu_seqlens,
//    const int* seq_info, const int* tok_step, const float* step_inv, int n_tokens, int num_heads,
//    int kv_heads, int head_dim, int delta, int window, int h_lo, int h_hi, int do_fci,
//    int do_rhythm, float* fci_col, float* fai_col, float* dist_row, float* waad_row)
//   q/k/lse exactly as for attn_fwd (q = qkv, k = qkv + H*D, strides (H + 2KV) * D, lse [N, H]).
//   Row outputs f32 [num_heads, n_tokens] indexed h * n_tokens + global token; column outputs
//   f32 [q_tiles, num_heads, n_tokens], one plane per query tile (blockIdx.x), each block's column
//   sums over its 64 rows stored (never accumulated) in its own plane, so no two blocks write one
//   element; attn_stats_col_sum then sums the planes in tile order (deterministic, no atomics):
//   * fci_col (do_fci; ZEROED by the host before the launch):
//       sum over planes of fci_col[., h, s] = sum over rows t with j(t) >= k(s) + delta,
//                       2 <= k(s) <= kmax of P[t, s] / |S_j(t)|   (j(t), k(s) = steps of t and s)
//   * fai_col (do_rhythm; ZEROED by the host):
//       sum over planes of fai_col[., h, s] = sum over rows t with h_lo <= t - s <= h_hi of
//                       P[t, s], for keys s >= r
//   * dist_row (do_rhythm; written for response rows t >= r only):
//       dist_row[h, t] = sum_{s <= t} P[t, s] * (t - s)
//   * waad_row (do_rhythm; written for response rows only):
//       waad_row[h, t] = sum_{s <= t} P[t, s] * min(t - s, window)
//   Pointers of a disabled group may be NULL. Launch: grid = (ceil(max_seq_len / 64), num_heads,
//   n_seq), block = 256 (MUST be 256), dynamic shared memory = 128 * (DM + 1) * 4 bytes
//   (DM 32: 16896, 64: 33280, 128: 66048 B; raise the attribute above 48 KiB).
//
// ===== 1b. attn_stats_col_sum
//   (float* col, const float* planes, int q_tiles, int plane)
//   col[i] = sum over q < q_tiles, in order, of planes[q * plane + i], for i < plane
//   (plane = num_heads * n_tokens): pass 1's column planes folded into fci_col / fai_col [H, N].
//   Launch: grid = (ceil(plane / 256)), block = 256.
//
// ===== 2. attn_stats_fci_reduce
//   (unsigned long long* fci_best, const float* fci_col, int n_tokens, const int* cu_seqlens,
//    const int* seq_info, const int* bounds, const int* bounds_off, int num_heads, int layer)
//   After pass 1 on an FCI layer: for each sequence, head h and step k in [2, min(kmax, S - 1)]:
//     y = (sum_{s in S_k} fci_col[h, s]) / |S_k|        (= y_k^{l,h} of ALGORITHMS.md §1)
//   folded into fci_best[bounds_off[i] + k] with atomicMax on the key
//     ((u64) float_bits(y) << 32) | (0xffffffff - (layer * num_heads + h)),
//   i.e. the max over layers and heads, ties to the lowest (layer, head) like the CPU. fci_best
//   ([bounds_off[n_seq]] u64) is ZEROED by the host once per batch, before the first layer.
//   Host post-processing: y_k = float_from_bits(key >> 32); argmax head id = 0xffffffff -
//   (key & 0xffffffff) = layer * H + head, and "None" where y_k == 0 (steps 0, 1, > kmax).
//   Launch: grid = (n_seq, num_heads), block = 256, no dynamic shared memory.
//
// ===== 3. attn_stats_lookback
//   (float* lookback, int lookback_stride, const float* dist_row, int n_tokens,
//    const int* cu_seqlens, const int* seq_info, int num_heads)
//   After pass 1 on a rhythm layer: lookback[i * lookback_stride + h] =
//     (sum over response rows t of dist_row[h, t]) / T  (f64 sum; 0 when T = 0).
//   For the CPU's [rhythm layers x H] order per sequence, pass lookback + rl * H and
//   lookback_stride = n_rhythm_layers * H. Launch: grid = (n_seq, num_heads), block = 256.
//   The host then picks the local / global heads per sequence (select_heads, on the CPU).
//
// ===== 4. attn_stats_combine
//   (float* waad_out, float* fai_out, const float* waad_rows, const float* fai_cols,
//    const int* head_sel, int n_heads_total, int n_tokens, const int* cu_seqlens,
//    const int* seq_info, int h_lo, int h_hi)
//   waad_rows, fai_cols: [n_heads_total, n_tokens] with n_heads_total = n_rhythm_layers * H: the
//   pass-1 waad_row / fai_col of every rhythm layer stacked (layer slice rl at rl * H * n_tokens).
//   head_sel: int [n_seq, n_heads_total], bit 0 = local head, bit 1 = global head.
//   For response token i of sequence s (global t = start + r + i):
//     waad_out[t] = sum over local heads (ascending) of waad_rows[hd, t] / n_local
//     fai_out[t]  = sum over global heads (ascending) of fai_cols[hd, t] * c_i / n_global,
//       c_i = 1 / (b - a + 1) for the window [a, b] = [i + h_lo, min(T - 1, i + h_hi)], 0 when
//       empty (i + h_lo >= T or h_lo > h_hi).
//   Only response tokens are written. Per-head FAI partials (keep_head_partials) are
//   fai_cols[hd, t] * c_i, computed by the host if wanted.
//   Launch: grid = (ceil(max_T / 256), n_seq), block = 256.
//
// Per-batch host sequence: zero fci_best; for each layer with a role: zero fci_col (FCI) and
// that layer's fai slice (rhythm), run pass 1, then fci_reduce (FCI layer) and lookback (rhythm
// layer); read lookback, select heads, upload head_sel, run combine; read fci_best, waad, fai.
//
// Deviations from the CPU: the column sums run in f32 in a fixed order (warps within a tile, then
// tiles in order), the CPU's FCI in f64 in another fixed order, so results agree to f32 rounding,
// not bit for bit; every sum is in a fixed order, so a run repeats bit for bit.

#define ST_B 64

template <typename T, int DM>
__device__ void attn_stats(const T* __restrict__ q, int q_stride, const T* __restrict__ k, int k_stride,
                           const float* __restrict__ lse, const int* __restrict__ cu_seqlens,
                           const int* __restrict__ seq_info, const int* __restrict__ tok_step,
                           const float* __restrict__ step_inv, int n_tokens, int num_heads, int kv_heads,
                           int head_dim, int delta, int window, int h_lo, int h_hi, int do_fci, int do_rhythm,
                           float* fci_col, float* fai_col, float* dist_row, float* waad_row) {
    extern __shared__ float smem[];
    constexpr int LD = DM + 1;
    constexpr int NJ = ST_B / 4;
    float* Qs = smem;          // [64][LD]
    float* Ks = Qs + ST_B * LD;  // [64][LD]
    __shared__ int s_kstep[ST_B];
    // per-warp column partials (8 warps x 64 columns), summed in warp order
    __shared__ float s_colf[8][ST_B], s_cola[8][ST_B];

    const int seq = blockIdx.z, h = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int q0 = blockIdx.x * ST_B;
    if (q0 >= len) return;
    const int r_resp = seq_info[4 * seq + 0];
    const int kmax = seq_info[4 * seq + 1];
    const int fci_key_lo = seq_info[4 * seq + 2];
    const int fci_row_lo = seq_info[4 * seq + 3];
    const bool fci_on = do_fci != 0 && kmax >= 2 && fci_row_lo < len;
    const bool rhy_on = do_rhythm != 0 && r_resp < len;
    const int row_lo = min(rhy_on ? r_resp : len, fci_on ? fci_row_lo : len);
    if (q0 + ST_B <= row_lo) return;  // no row of this tile needs anything (block-uniform)
    const bool blk_rhy = rhy_on && q0 + ST_B > r_resp;
    const bool blk_fci = fci_on && q0 + ST_B > fci_row_lo;

    const int g = h / (num_heads / kv_heads);
    const int tid = threadIdx.x, lane = tid & 31;
    const int r = tid >> 2, c = tid & 3;
    const int t = q0 + r;
    const bool t_ok = t < len;
    const float scale = 1.0f / sqrtf((float)head_dim);
    const bool row_rhy = blk_rhy && t_ok && t >= r_resp;
    int kcap = -1;
    float inv_j = 0.0f;
    if (blk_fci && t_ok && t >= fci_row_lo) {
        const int j = tok_step[start + t];
        if (j >= delta) kcap = min(j - delta, kmax);
        inv_j = step_inv[start + t];
    }
    const bool row_fci = kcap >= 2;
    const float lse_t = t_ok ? lse[(long long)(start + t) * num_heads + h] : 0.0f;
    const float wcap = (float)window;

    load_rows_f32<T, DM>(Qs, LD, ST_B, q + (long long)start * q_stride + (long long)h * head_dim, q_stride, q0,
                         len, head_dim);
    const T* kb = k + (long long)start * k_stride + (long long)g * head_dim;
    const long long col_base = (long long)h * n_tokens + start;
    // this query tile's plane of the column outputs
    const long long plane_base = (long long)blockIdx.x * num_heads * n_tokens + col_base;

    float dist = 0.0f, waad = 0.0f;
    const int klo = blk_rhy ? 0 : fci_key_lo;
    const int khi = min(q0 + ST_B, len);
    for (int k0 = klo; k0 < khi; k0 += ST_B) {
        __syncthreads();
        load_rows_f32<T, DM>(Ks, LD, ST_B, kb, k_stride, k0, len, head_dim);
        if (tid < ST_B) s_kstep[tid] = (blk_fci && k0 + tid < len) ? tok_step[start + k0 + tid] : -1;
        __syncthreads();

        float s[NJ];
        tile_scores<DM, NJ>(s, Qs + r * LD, Ks, LD, c);
        // Tile-level (block-uniform) tests for the column sums.
        const int dmin = q0 - (k0 + ST_B - 1), dmax = q0 + ST_B - 1 - k0;
        const bool tile_fai = blk_rhy && dmax >= h_lo && dmin <= h_hi && k0 + ST_B > r_resp;
        const bool tile_fci = blk_fci && k0 + ST_B > fci_key_lo;
        float cf[NJ], ca[NJ];
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
            const int sl = c + 4 * jj;
            const int sk = k0 + sl;
            const bool valid = t_ok && sk <= t && sk < len;
            const float p = valid ? expf(s[jj] * scale - lse_t) : 0.0f;
            const int dd = t - sk;
            if (row_rhy) {
                dist += p * (float)dd;
                waad += p * fminf((float)dd, wcap);
            }
            ca[jj] = (row_rhy && sk >= r_resp && dd >= h_lo && dd <= h_hi) ? p : 0.0f;
            const int ks = s_kstep[sl];
            cf[jj] = (row_fci && ks >= 2 && ks <= kcap) ? p * inv_j : 0.0f;
        }
        if (tile_fci || tile_fai) {
            // Column sums over the tile's 64 rows: lanes with equal (lane & 3) share key columns.
#pragma unroll
            for (int jj = 0; jj < NJ; ++jj) {
                float a = cf[jj], b = ca[jj];
#pragma unroll
                for (int o = 4; o < 32; o <<= 1) {
                    a += __shfl_xor_sync(ARBOR_FULL_MASK, a, o);
                    b += __shfl_xor_sync(ARBOR_FULL_MASK, b, o);
                }
                if (lane < 4) {
                    s_colf[tid >> 5][c + 4 * jj] = a;
                    s_cola[tid >> 5][c + 4 * jj] = b;
                }
            }
            __syncthreads();
            if (tid < ST_B && k0 + tid < len) {
                float a = 0.0f, b = 0.0f;
#pragma unroll
                for (int w = 0; w < 8; ++w) {
                    a += s_colf[w][tid];
                    b += s_cola[w][tid];
                }
                if (tile_fci) fci_col[plane_base + k0 + tid] = a;
                if (tile_fai) fai_col[plane_base + k0 + tid] = b;
            }
        }
    }
    dist += __shfl_xor_sync(ARBOR_FULL_MASK, dist, 1);
    dist += __shfl_xor_sync(ARBOR_FULL_MASK, dist, 2);
    waad += __shfl_xor_sync(ARBOR_FULL_MASK, waad, 1);
    waad += __shfl_xor_sync(ARBOR_FULL_MASK, waad, 2);
    if (c == 0 && row_rhy) {
        dist_row[col_base + t] = dist;
        waad_row[col_base + t] = waad;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    attn_stats_col_sum(float* __restrict__ col, const float* __restrict__ planes, int q_tiles, int plane) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < plane;
         i += (long long)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int q = 0; q < q_tiles; ++q) acc += planes[(long long)q * plane + i];
        col[i] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    attn_stats_32_f32(const float* q, int q_stride, const float* k, int k_stride, const float* lse,
        const int* cu_seqlens, const int* seq_info, const int* tok_step, const float* step_inv, int n_tokens,
        int num_heads, int kv_heads, int head_dim, int delta, int window, int h_lo, int h_hi, int do_fci,
        int do_rhythm, float* fci_col, float* fai_col, float* dist_row, float* waad_row) {
    attn_stats<float, 32>(q, q_stride, k, k_stride, lse, cu_seqlens, seq_info, tok_step, step_inv, n_tokens,
                          num_heads, kv_heads, head_dim, delta, window, h_lo, h_hi, do_fci, do_rhythm, fci_col,
                          fai_col, dist_row, waad_row);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_stats_64_f32(const float* q, int q_stride, const float* k, int k_stride, const float* lse,
        const int* cu_seqlens, const int* seq_info, const int* tok_step, const float* step_inv, int n_tokens,
        int num_heads, int kv_heads, int head_dim, int delta, int window, int h_lo, int h_hi, int do_fci,
        int do_rhythm, float* fci_col, float* fai_col, float* dist_row, float* waad_row) {
    attn_stats<float, 64>(q, q_stride, k, k_stride, lse, cu_seqlens, seq_info, tok_step, step_inv, n_tokens,
                          num_heads, kv_heads, head_dim, delta, window, h_lo, h_hi, do_fci, do_rhythm, fci_col,
                          fai_col, dist_row, waad_row);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_stats_128_f32(const float* q, int q_stride, const float* k, int k_stride, const float* lse,
        const int* cu_seqlens, const int* seq_info, const int* tok_step, const float* step_inv, int n_tokens,
        int num_heads, int kv_heads, int head_dim, int delta, int window, int h_lo, int h_hi, int do_fci,
        int do_rhythm, float* fci_col, float* fai_col, float* dist_row, float* waad_row) {
    attn_stats<float, 128>(q, q_stride, k, k_stride, lse, cu_seqlens, seq_info, tok_step, step_inv, n_tokens,
                          num_heads, kv_heads, head_dim, delta, window, h_lo, h_hi, do_fci, do_rhythm, fci_col,
                          fai_col, dist_row, waad_row);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_stats_32_bf16(const unsigned short* q, int q_stride, const unsigned short* k, int k_stride, const float* lse,
        const int* cu_seqlens, const int* seq_info, const int* tok_step, const float* step_inv, int n_tokens,
        int num_heads, int kv_heads, int head_dim, int delta, int window, int h_lo, int h_hi, int do_fci,
        int do_rhythm, float* fci_col, float* fai_col, float* dist_row, float* waad_row) {
    attn_stats<unsigned short, 32>(q, q_stride, k, k_stride, lse, cu_seqlens, seq_info, tok_step, step_inv, n_tokens,
                          num_heads, kv_heads, head_dim, delta, window, h_lo, h_hi, do_fci, do_rhythm, fci_col,
                          fai_col, dist_row, waad_row);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_stats_64_bf16(const unsigned short* q, int q_stride, const unsigned short* k, int k_stride, const float* lse,
        const int* cu_seqlens, const int* seq_info, const int* tok_step, const float* step_inv, int n_tokens,
        int num_heads, int kv_heads, int head_dim, int delta, int window, int h_lo, int h_hi, int do_fci,
        int do_rhythm, float* fci_col, float* fai_col, float* dist_row, float* waad_row) {
    attn_stats<unsigned short, 64>(q, q_stride, k, k_stride, lse, cu_seqlens, seq_info, tok_step, step_inv, n_tokens,
                          num_heads, kv_heads, head_dim, delta, window, h_lo, h_hi, do_fci, do_rhythm, fci_col,
                          fai_col, dist_row, waad_row);
}

extern "C" __global__ void __launch_bounds__(256)
    attn_stats_128_bf16(const unsigned short* q, int q_stride, const unsigned short* k, int k_stride, const float* lse,
        const int* cu_seqlens, const int* seq_info, const int* tok_step, const float* step_inv, int n_tokens,
        int num_heads, int kv_heads, int head_dim, int delta, int window, int h_lo, int h_hi, int do_fci,
        int do_rhythm, float* fci_col, float* fai_col, float* dist_row, float* waad_row) {
    attn_stats<unsigned short, 128>(q, q_stride, k, k_stride, lse, cu_seqlens, seq_info, tok_step, step_inv, n_tokens,
                          num_heads, kv_heads, head_dim, delta, window, h_lo, h_hi, do_fci, do_rhythm, fci_col,
                          fai_col, dist_row, waad_row);
}

// ---------------------------------------------------------------------------------------------

extern "C" __global__ void attn_stats_fci_reduce(unsigned long long* __restrict__ fci_best,
                                                 const float* __restrict__ fci_col, int n_tokens,
                                                 const int* __restrict__ cu_seqlens,
                                                 const int* __restrict__ seq_info, const int* __restrict__ bounds,
                                                 const int* __restrict__ bounds_off, int num_heads, int layer) {
    const int seq = blockIdx.x, h = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int b0 = bounds_off[seq];
    const int n_steps = bounds_off[seq + 1] - b0 - 1;
    const int kmax = seq_info[4 * seq + 1];
    const int kend = min(kmax, n_steps - 1);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const float* col = fci_col + (long long)h * n_tokens + start;
    const unsigned int id = 0xffffffffu - (unsigned int)(layer * num_heads + h);
    for (int kk = 2 + warp; kk <= kend; kk += nw) {
        const int lo = bounds[b0 + kk], hi = bounds[b0 + kk + 1];
        float a = 0.0f;
        for (int s = lo + lane; s < hi; s += 32) a += col[s];
        a = warp_sum(a);
        if (lane == 0 && hi > lo) {
            const float y = fmaxf(a / (float)(hi - lo), 0.0f);
            const unsigned long long key =
                ((unsigned long long)(unsigned int)__float_as_int(y) << 32) | (unsigned long long)id;
            atomicMax(fci_best + b0 + kk, key);
        }
    }
}

extern "C" __global__ void attn_stats_lookback(float* __restrict__ lookback, int lookback_stride,
                                               const float* __restrict__ dist_row, int n_tokens,
                                               const int* __restrict__ cu_seqlens, const int* __restrict__ seq_info,
                                               int num_heads) {
    __shared__ double scratch[32];
    const int seq = blockIdx.x, h = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int r = seq_info[4 * seq + 0];
    const float* row = dist_row + (long long)h * n_tokens + start;
    double a = 0.0;
    for (int t = r + (int)threadIdx.x; t < len; t += blockDim.x) a += (double)row[t];
    a = block_sum_d(a, scratch);
    if (threadIdx.x == 0) {
        const int tl = len - r;
        lookback[(long long)seq * lookback_stride + h] = tl > 0 ? (float)(a / (double)tl) : 0.0f;
    }
}

extern "C" __global__ void attn_stats_combine(float* __restrict__ waad_out, float* __restrict__ fai_out,
                                              const float* __restrict__ waad_rows, const float* __restrict__ fai_cols,
                                              const int* __restrict__ head_sel, int n_heads_total, int n_tokens,
                                              const int* __restrict__ cu_seqlens, const int* __restrict__ seq_info,
                                              int h_lo, int h_hi) {
    const int seq = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int r = seq_info[4 * seq + 0];
    const int tl = len - r;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tl) return;
    const int* sel = head_sel + (long long)seq * n_heads_total;
    int n_loc = 0, n_glob = 0;
    for (int hd = 0; hd < n_heads_total; ++hd) {
        n_loc += sel[hd] & 1;
        n_glob += (sel[hd] >> 1) & 1;
    }
    const float inv_loc = 1.0f / (float)max(n_loc, 1);
    const float inv_glob = 1.0f / (float)max(n_glob, 1);
    float cnt = 0.0f;
    if (h_lo <= h_hi && i + h_lo < tl) {
        const int a = i + h_lo, b = min(tl - 1, i + h_hi);
        cnt = 1.0f / (float)(b - a + 1);
    }
    const long long tok = (long long)start + r + i;
    float w = 0.0f, f = 0.0f;
    for (int hd = 0; hd < n_heads_total; ++hd) {
        const int sv = sel[hd];
        if (sv & 1) w += waad_rows[(long long)hd * n_tokens + tok] * inv_loc;
        if (sv & 2) f += fai_cols[(long long)hd * n_tokens + tok] * cnt * inv_glob;
    }
    waad_out[tok] = w;
    fai_out[tok] = f;
}
