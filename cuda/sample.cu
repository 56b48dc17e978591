// Token sampling on the device: one token per row of logits, with its behaviour log-probability
// and the entropy of the temperature-scaled distribution (CPU: src/rollout/sampler.rs `sample`:
// greedy and plain temperature in sample_rows_*, top-k / top-p in sample_truncated_f32).
//
// ABI (N rows of V logits; T = float (_f32) or unsigned short bf16 (_bf16); everything else f32,
// the uniforms f64):
//
// sample_rows_f32 / sample_rows_bf16
//   (const T* logits, const double* uniforms, float temperature, unsigned int* tokens,
//    float* logp, float* entropy, int n, int v)
//   logits: [N, V]; uniforms: [N] in [0, 1), one per row, drawn by the host from each sequence's
//   random stream exactly as the CPU sampler draws its one uniform per sampled token (so a row's
//   draw is the same pure function of seed and coordinates on both backends; ignored, and may be
//   NULL, when temperature <= 0); tokens, logp, entropy: [N] (overwritten).
//   With t = temperature if > 0 else 1, m = max_j z_j, s_j = (z_j - m) / t (f32), w_j = expf(s_j)
//   (f32), S = sum_j w_j and SZ = sum_j w_j * s_j (both f64):
//     logp[i]    = s_token - log S (f64, stored as f32)
//     entropy[i] = log S - SZ / S
//     token      = temperature <= 0: the first maximum of the row;
//                  otherwise the inverse CDF in vocabulary order: u = uniforms[i] * S, then
//                  u -= w_j for j = 0, 1, ... and the first j where u <= 0 (V - 1 if none).
//   Thread c of the block owns the contiguous chunk [c*C, min(V, (c+1)*C)), C = ceil(V / 256): it
//   reduces its chunk in order (f64 sums, first maximum), reading it from a shared-memory tile that
//   the block fills 32 elements of every chunk at a time with coalesced loads (static shared
//   memory: 256 x 33 floats besides the chunk results); thread 0 then adds the 256 chunk sums in
//   chunk order and walks them, and the chunk holding u element by element. The result is a
//   fixed function of the row (no atomics), and the same for every N and every row position.
//   Launch: grid = (n), block = 256 (MUST be 256), no dynamic shared memory.

#define SAMPLE_BLOCK 256
// Elements of each thread's chunk staged in shared memory per round (a warp loads one chunk's
// round: 32 consecutive elements, coalesced), and the padded row of the tile (no bank conflicts
// when thread c reads its own row).
#define SAMPLE_TILE 32
#define SAMPLE_TILE_ROW (SAMPLE_TILE + 1)

// Round `r` of every thread's chunk into `tile`: thread c's elements [lo_c + r*TILE, ...) (lo_c =
// c * chunk; the round's width is min(TILE, chunk - r*TILE), clipped to the row) at
// tile[c * TILE_ROW + k]; what lies outside is never read. Consecutive threads load consecutive
// elements of one chunk's round (and of the next chunk's, where a round covers a whole short
// chunk), so each warp instruction touches one or two cache lines instead of 32.
template <typename T>
__device__ __forceinline__ void stage_round(const T* __restrict__ z, int v, int chunk, int r, float* tile) {
    const int width = min(SAMPLE_TILE, chunk - r * SAMPLE_TILE);
    for (int i = threadIdx.x; i < SAMPLE_BLOCK * width; i += SAMPLE_BLOCK) {
        const int c = i / width, k = i - c * width;
        const long long g = (long long)c * chunk + r * SAMPLE_TILE + k;
        if (g < v) tile[c * SAMPLE_TILE_ROW + k] = load_f(z + g);
    }
}

// The sums of w_j = expf((z_j - m) / t) and w_j * (z_j - m) / t over z[lo, hi), in order (f64).
template <typename T>
__device__ void chunk_sums(const T* __restrict__ z, int lo, int hi, float m, float t, double& s, double& sz) {
    s = 0.0;
    sz = 0.0;
    for (int j = lo; j < hi; ++j) {
        const float sj = (load_f(z + j) - m) / t;
        const float w = expf(sj);
        s += (double)w;
        sz += (double)w * (double)sj;
    }
}

template <typename T>
__device__ void sample_rows(const T* __restrict__ logits, const double* __restrict__ uniforms, float temperature,
                            unsigned int* __restrict__ tokens, float* __restrict__ logp,
                            float* __restrict__ entropy, int n, int v) {
    __shared__ float red[32];
    __shared__ double csum[SAMPLE_BLOCK], csz[SAMPLE_BLOCK];
    __shared__ float cmax[SAMPLE_BLOCK];
    __shared__ int carg[SAMPLE_BLOCK];
    __shared__ float tile[SAMPLE_BLOCK * SAMPLE_TILE_ROW];
    const int row = blockIdx.x;
    if (row >= n) return;
    const T* z = logits + (long long)row * v;
    const float t = temperature > 0.0f ? temperature : 1.0f;
    const int chunk = (v + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK;
    const int lo = min(v, (int)threadIdx.x * chunk), hi = min(v, lo + chunk);
    // each thread still reduces its own chunk in order, a round of TILE elements at a time from
    // the shared tile (the same arithmetic as reading them from global memory one by one)
    const int rounds = (chunk + SAMPLE_TILE - 1) / SAMPLE_TILE;
    const float* mine = tile + threadIdx.x * SAMPLE_TILE_ROW;

    // chunk maximum and its first position
    float mx = neg_inf_f();
    int arg = -1;
    for (int r = 0; r < rounds; ++r) {
        stage_round(z, v, chunk, r, tile);
        __syncthreads();
        const int a = lo + r * SAMPLE_TILE, b = min(hi, a + SAMPLE_TILE);
        for (int j = a; j < b; ++j) {
            const float x = mine[j - a];
            if (arg < 0 || x > mx) {
                mx = x;
                arg = j;
            }
        }
        __syncthreads();
    }
    const float m = block_max(mx, red);

    // chunk sums of w and w * s, in order (chunk_sums' arithmetic)
    double s = 0.0, sz = 0.0;
    for (int r = 0; r < rounds; ++r) {
        stage_round(z, v, chunk, r, tile);
        __syncthreads();
        const int a = lo + r * SAMPLE_TILE, b = min(hi, a + SAMPLE_TILE);
        for (int j = a; j < b; ++j) {
            const float sj = (mine[j - a] - m) / t;
            const float w = expf(sj);
            s += (double)w;
            sz += (double)w * (double)sj;
        }
        __syncthreads();
    }
    csum[threadIdx.x] = s;
    csz[threadIdx.x] = sz;
    cmax[threadIdx.x] = mx;
    carg[threadIdx.x] = arg;
    __syncthreads();
    if (threadIdx.x != 0) return;

    double total = 0.0, total_sz = 0.0;
    for (int c = 0; c < SAMPLE_BLOCK; ++c) {
        total += csum[c];
        total_sz += csz[c];
    }
    int pick = v - 1;
    if (temperature <= 0.0f) {
        float best = neg_inf_f();
        int at = -1;
        for (int c = 0; c < SAMPLE_BLOCK; ++c) {
            if (carg[c] >= 0 && (at < 0 || cmax[c] > best)) {
                best = cmax[c];
                at = carg[c];
            }
        }
        pick = at < 0 ? 0 : at;
    } else {
        double u = uniforms[row] * total;
        int c = 0;
        // whole chunks first; the chunk where u would reach zero is walked element by element,
        // continuing into later chunks if rounding leaves u just above zero at its end
        while (c < SAMPLE_BLOCK && u - csum[c] > 0.0) {
            u -= csum[c];
            ++c;
        }
        bool found = false;
        for (int j = min(v, c * chunk); j < v && !found; ++j) {
            const float w = expf((load_f(z + j) - m) / t);
            u -= (double)w;
            if (u <= 0.0) {
                pick = j;
                found = true;
            }
        }
    }
    const double log_s = log(total);
    tokens[row] = (unsigned int)pick;
    logp[row] = (float)((double)((load_f(z + pick) - m) / t) - log_s);
    entropy[row] = (float)(log_s - total_sz / total);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_BLOCK)
    sample_rows_f32(const float* logits, const double* uniforms, float temperature, unsigned int* tokens,
                    float* logp, float* entropy, int n, int v) {
    sample_rows<float>(logits, uniforms, temperature, tokens, logp, entropy, n, v);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_BLOCK)
    sample_rows_bf16(const unsigned short* logits, const double* uniforms, float temperature, unsigned int* tokens,
                     float* logp, float* entropy, int n, int v) {
    sample_rows<unsigned short>(logits, uniforms, temperature, tokens, logp, entropy, n, v);
}

// sample_truncated_f32
//   (const float* logits, const double* uniforms, float temperature, int top_k, float top_p,
//    unsigned int* tokens, float* logp, float* entropy, int n, int v)
//   Top-k / top-p sampling at temperature > 0 (the CPU sampler's truncated path): m, S, SZ, logp and
//   entropy as in sample_rows (of the full distribution). With p_j = (float)(w_j / S) and the key
//   key_j = (bits(p_j) << 32) | (0xffffffff - j) (u64; larger key = earlier in the CPU's order:
//   p descending, then index ascending; all keys distinct), and
//     C(t) = #{j : key_j >= t},  M(t) = sum of p_j over key_j >= t (f64),
//   the kept set is {key_j >= t_keep}, t_keep = the largest t with C(t) >= k or M(t) >= top_p
//   (k = top_k if > 0 else V, capped at V; the mass test only when top_p < 1): the shortest prefix
//   of the CPU's sorted order holding k tokens or mass top_p. The token is the largest key t >= t_keep
//   with M(t) >= u * M(t_keep): the first token of the sorted order where the kept mass reaches
//   u * (kept mass), as the CPU's walk. Both are found by bisection over the 64-bit keys (64 passes
//   each). A pass reads the row until the keys >= the bisection's lower bound number at most
//   TRUNC_CAP (2048: a peaked distribution's kept set is a few tokens, after a dozen passes); they
//   are then copied, in index order, to shared memory, and every later pass reads them there
//   (a pass over the row is V expf and divides). C and M of a pass are summed per thread over its
//   chunk of ceil(count / 256) candidates in order and over the threads in order (no atomics, so a
//   fixed function of the row). The CPU accumulates in f32 in
//   sorted order, so a token whose cumulative mass is within rounding of a boundary may differ.
//   Launch: grid = (n), block = 256 (MUST be 256), no dynamic shared memory (static: 32 KB).

// The most candidates the truncated kernel keeps in shared memory once the bisection has narrowed
// to them (keys u64 + probabilities f32: 24 KB).
#define TRUNC_CAP 2048

extern "C" __global__ void __launch_bounds__(SAMPLE_BLOCK)
    sample_truncated_f32(const float* __restrict__ logits, const double* __restrict__ uniforms, float temperature,
                         int top_k, float top_p, unsigned int* __restrict__ tokens, float* __restrict__ logp,
                         float* __restrict__ entropy, int n, int v) {
    __shared__ float red[32];
    __shared__ double part[SAMPLE_BLOCK], part_sz[SAMPLE_BLOCK];
    __shared__ unsigned int pcount[SAMPLE_BLOCK];
    __shared__ double s_total, s_total_sz, s_mass;
    __shared__ unsigned int s_count, s_nc;
    __shared__ unsigned long long pmin[SAMPLE_BLOCK], s_min;
    __shared__ unsigned long long ck[TRUNC_CAP];
    __shared__ float cp[TRUNC_CAP];
    const int row = blockIdx.x;
    if (row >= n) return;
    const float* z = logits + (long long)row * v;
    const float t = temperature > 0.0f ? temperature : 1.0f;
    const int chunk = (v + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK;
    const int lo_j = min(v, (int)threadIdx.x * chunk), hi_j = min(v, lo_j + chunk);

    float mx = neg_inf_f();
    for (int j = lo_j; j < hi_j; ++j) mx = fmaxf(mx, z[j]);
    const float m = block_max(mx, red);
    double s, sz;
    chunk_sums(z, lo_j, hi_j, m, t, s, sz);
    part[threadIdx.x] = s;
    part_sz[threadIdx.x] = sz;
    __syncthreads();
    if (threadIdx.x == 0) {
        double a = 0.0, b = 0.0;
        for (int c = 0; c < SAMPLE_BLOCK; ++c) {
            a += part[c];
            b += part_sz[c];
        }
        s_total = a;
        s_total_sz = b;
    }
    __syncthreads();
    const double total = s_total;
    auto prob = [&](int j) { return (float)((double)expf((z[j] - m) / t) / total); };
    auto key_of = [&](float p, int j) {
        return ((unsigned long long)__float_as_uint(p) << 32) | (unsigned long long)(0xffffffffu - (unsigned int)j);
    };

    // The candidates a pass reads: the whole row, or (`compact`) the s_nc keys >= some bound kept
    // in index order in ck / cp. Either way thread i reads its chunk of ceil(count / 256) in order.
    bool compact = false;
    // C(t) and M(t) into s_count / s_mass (every thread calls it; it ends synchronised)
    auto count_mass = [&](unsigned long long key_t) {
        unsigned int cnt = 0;
        double mass = 0.0;
        if (compact) {
            const int nc = (int)s_nc, c2 = (nc + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK;
            const int a = min(nc, (int)threadIdx.x * c2), b = min(nc, a + c2);
            for (int q = a; q < b; ++q) {
                if (ck[q] >= key_t) {
                    ++cnt;
                    mass += (double)cp[q];
                }
            }
        } else {
            for (int j = lo_j; j < hi_j; ++j) {
                const float p = prob(j);
                if (key_of(p, j) >= key_t) {
                    ++cnt;
                    mass += (double)p;
                }
            }
        }
        pcount[threadIdx.x] = cnt;
        part[threadIdx.x] = mass;
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned int c = 0;
            double a = 0.0;
            for (int k = 0; k < SAMPLE_BLOCK; ++k) {
                c += pcount[k];
                a += part[k];
            }
            s_count = c;
            s_mass = a;
        }
        __syncthreads();
    };
    // keep the (at most TRUNC_CAP) keys >= bound, in index order (block-uniform call; the
    // candidates of thread i follow those of threads before it: a scan of the per-thread counts)
    auto compact_to = [&](unsigned long long bound) {
        unsigned int cnt = 0;
        for (int j = lo_j; j < hi_j; ++j) cnt += key_of(prob(j), j) >= bound;
        pcount[threadIdx.x] = cnt;
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned int run = 0;
            for (int k = 0; k < SAMPLE_BLOCK; ++k) {
                const unsigned int c = pcount[k];
                pcount[k] = run;
                run += c;
            }
            s_nc = run;
        }
        __syncthreads();
        unsigned int at = pcount[threadIdx.x];
        for (int j = lo_j; j < hi_j; ++j) {
            const float p = prob(j);
            const unsigned long long key = key_of(p, j);
            if (key >= bound) {
                ck[at] = key;
                cp[at] = p;
                ++at;
            }
        }
        __syncthreads();
        compact = true;
    };

    // the smallest candidate key >= bound, into s_min (block-uniform call; it ends synchronised):
    // a bisection's bound moved up to the key it stands for. The keys between two neighbours
    // select the same tokens, but the passes before and after the copy to shared memory sum their
    // mass in different groupings, which may differ in the last bit, and then the bisection can stop
    // between two keys.
    auto snap = [&](unsigned long long bound) {
        unsigned long long best = ~0ull;
        if (compact) {
            const int nc = (int)s_nc, c2 = (nc + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK;
            const int a = min(nc, (int)threadIdx.x * c2), b = min(nc, a + c2);
            for (int q = a; q < b; ++q) {
                if (ck[q] >= bound && ck[q] < best) best = ck[q];
            }
        } else {
            for (int j = lo_j; j < hi_j; ++j) {
                const unsigned long long k = key_of(prob(j), j);
                if (k >= bound && k < best) best = k;
            }
        }
        pmin[threadIdx.x] = best;
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned long long b = ~0ull;
            for (int k = 0; k < SAMPLE_BLOCK; ++k) b = pmin[k] < b ? pmin[k] : b;
            s_min = b;
        }
        __syncthreads();
    };

    const unsigned int keep_k = top_k > 0 ? min((unsigned int)top_k, (unsigned int)v) : (unsigned int)v;
    const double mass_target = top_p < 1.0f ? (double)top_p : 1.0 / 0.0;
    // the largest t >= lo with C(t) >= 1 and the test holding (it holds at lo), moved up to the
    // key it stands for; the candidates move to shared memory once C(lo) fits there. The test:
    // the kept set's (C(t) >= k or M(t) >= top_p), or the draw's (M(t) >= target).
    double target = 0.0;
    auto bisect = [&](unsigned long long lo, bool draw) {
        unsigned long long hi = ~0ull;
        while (lo < hi) {
            const unsigned long long d = hi - lo;
            const unsigned long long mid = lo + (d >> 1) + (d & 1ull);
            count_mass(mid);
            const unsigned int cnt = s_count;
            const double mass = s_mass;
            const bool test = draw ? mass >= target : (cnt >= keep_k || mass >= mass_target);
            const bool yes = cnt >= 1 && test;  // one token at least
            __syncthreads();  // every thread has read s_count / s_mass before the next pass writes them
            if (yes) {
                lo = mid;
                if (!compact && cnt <= TRUNC_CAP) compact_to(lo);
            } else {
                hi = mid - 1;
            }
        }
        snap(lo);
        lo = s_min;
        __syncthreads();
        return lo;
    };
    // (C(0) = V: every key is >= 0)
    if ((unsigned int)v <= TRUNC_CAP) compact_to(0ull);
    const unsigned long long t_keep = bisect(0ull, false);
    count_mass(t_keep);
    target = uniforms[row] * s_mass;
    __syncthreads();
    // (u = 0: the most likely kept token)
    const unsigned long long lo = bisect(t_keep, true);
    if (threadIdx.x != 0) return;
    const int pick = (int)(0xffffffffu - (unsigned int)(lo & 0xffffffffull));
    const double log_s = log(total);
    tokens[row] = (unsigned int)pick;
    logp[row] = (float)((double)((z[pick] - m) / t) - log_s);
    entropy[row] = (float)(log_s - s_total_sz / total);
}
