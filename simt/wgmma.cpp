// arbor SIMT host emulator: Hopper's warpgroup-wide asynchronous products (wgmma, sm_90a) and
// their fences: the warpgroup collective, the shared-memory descriptors, the checks on operands in
// flight and the products' landing at wgmma.wait_group. The block's state is internal.h's.
#include "internal.h"
// bf16_to_f32, the kernels' own widening
#include "../cuda/common.cuh"

#include <cstdio>
#include <limits>
#include <map>
#include <unordered_map>
#include <vector>

namespace simt {

using namespace internal;

// ---------------------------------------------------------------------------------------------
// wgmma (sm_90a): warpgroup-wide asynchronous products, bf16 operands, f32 accumulators
// ---------------------------------------------------------------------------------------------
//
// PTX ISA semantics, as far as arbor uses them: wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16
// issued by the 128 threads of a warpgroup together; A (64 x 16) from a shared-memory descriptor or
// from registers, B (N x 16, n x k) from a descriptor; D += A B (or D = A B with scale-d 0). The
// results land at the wgmma.wait_group that retires the op's commit group: until then the
// accumulators read as NaN here (a GPU gives garbage). A GPU reads the shared operands at some
// time in between, so an operand that changes between the issue and the wait (a race) fails the
// launch. Every thread must have run wgmma.fence since its last wait (or the start) before an
// issue (a stricter rule than the ISA's, which asks for it after the registers were written),
// and an operand written by cp.async must have landed and been fenced for the async proxy
// (fence.proxy.async) by the thread that wrote it. Plain stores into an operand are not
// tracked: their missing proxy fence does not show here.
//
// Descriptors: bits 0-13 the start address >> 4, 16-29 the leading-dimension byte offset >> 4
// (LBO: between core matrices adjacent in K), 32-45 the stride byte offset >> 4 (SBO: adjacent in M
// or N), 49-51 the base offset, 62-63 the swizzle mode. A core matrix is 8 rows of 16 bytes,
// contiguous. Only the unswizzled layout (mode 0, base offset 0) is emulated: element (mn, k) of a
// K-major operand at start + (mn % 8) 16 + (k % 8) 2 + (mn / 8) SBO + (k / 8) LBO; of an MN-major
// one (transposed: tnsp 1) at start + (k % 8) 16 + (mn % 8) 2 + (mn / 8) SBO + (k / 8) LBO.
//
// Fragments, per warp w of the warpgroup (lane = 4 gr + tg): the accumulator's d[4 j + e] is row
// 16 w + gr + 8 (e >= 2), column 8 j + 2 tg + (e & 1); A from registers as mma.m16n8k16's A for
// rows 16 w .. 16 w + 15.

namespace {

struct Desc {
    size_t start, lbo, sbo;
};

Desc decode_desc(unsigned long long v, const char* which) {
    const unsigned swizzle = (unsigned)(v >> 62), base = (unsigned)((v >> 49) & 7);
    if (swizzle != 0 || base != 0) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "wgmma descriptor of %s with swizzle mode %u, base offset %u: the emulator has the unswizzled "
                 "layout only",
                 which, swizzle, base);
        fail(msg);
    }
    return Desc{(size_t)(v & 0x3FFF) << 4, (size_t)((v >> 16) & 0x3FFF) << 4, (size_t)((v >> 32) & 0x3FFF) << 4};
}

// The byte offset of element (mn, k) of an operand.
size_t desc_at(const Desc& d, int mn, int k, int tnsp) {
    const size_t in_core = tnsp ? (size_t)(k % 8) * 16 + (size_t)(mn % 8) * 2 : (size_t)(mn % 8) * 16 + (size_t)(k % 8) * 2;
    return d.start + in_core + (size_t)(mn / 8) * d.sbo + (size_t)(k / 8) * d.lbo;
}

// Every 16-byte row an operand of `mn` rows (M or N) by 16 (K) reads.
void operand_rows(const Desc& d, int mn, int tnsp, std::vector<size_t>& rows) {
    for (int i = 0; i < mn; ++i) {
        for (int k = 0; k < 16; ++k) {
            // one address per 16-byte row: (mn % 8 == 0 for MN-major rows, k % 8 == 0 for K-major)
            if (tnsp ? (i % 8) != 0 : (k % 8) != 0) continue;
            rows.push_back(desc_at(d, i, k, tnsp));
        }
    }
}

// The rows an op reads at its issue: inside dynamic shared memory, and written neither by a
// cp.async copy still in flight nor by one whose thread has not fenced it for the async proxy.
void check_rows(const std::vector<size_t>& rows) {
    Block& b = *g_block;
    char msg[300];
    for (size_t at : rows) {
        if (at + 16 > b.smem.size() - 16) {
            snprintf(msg, sizeof msg, "wgmma reads shared offset %zu, past the %zu bytes of dynamic shared memory", at,
                     b.smem.size() - 16);
            fail(msg);
        }
        auto it = b.unfenced.find(at);
        if (it != b.unfenced.end()) {
            snprintf(msg, sizeof msg,
                     "wgmma reads shared offset %zu, which thread %d wrote with cp.async and has not fenced for the "
                     "async proxy (fence.proxy.async.shared::cta)",
                     at, it->second);
            fail(msg);
        }
    }
    std::unordered_map<size_t, int> read;
    for (size_t at : rows) read[at] = 1;
    for (const Thread& t : b.threads) {
        for (const Copy& c : t.pending) {
            const unsigned char* d = static_cast<const unsigned char*>(c.dst);
            if (d < b.smem.data() || d >= b.smem.data() + b.smem.size()) continue;
            if (read.count((size_t)(d - b.smem.data()))) {
                snprintf(msg, sizeof msg,
                         "wgmma reads shared offset %zu, where a cp.async copy of thread %d has not landed (no "
                         "wait before the barrier)",
                         (size_t)(d - b.smem.data()), t.index);
                fail(msg);
            }
        }
    }
}

float smem_bf16(size_t at) {
    unsigned short h;
    memcpy(&h, g_block->smem.data() + at, 2);
    return bf16_to_f32(h);
}

// Whether an op after `from` in the warpgroup's queue accumulates into thread t's d.
bool later_uses(const WarpGroup& g, size_t from, int t) {
    for (size_t i = from + 1; i < g.ops.size(); ++i)
        if (g.ops[i].in[t].d == g.ops[from].in[t].d) return true;
    return false;
}

// Land op `i` of the queue: compute every thread's accumulators from the shared memory as it is now.
void land_op(WarpGroup& g, size_t i) {
    const WgOp& op = g.ops[i];
    check_rows(op.rows);  // (a copy issued after the product into its operand: a race)
    for (int t = 0; t < 128; ++t) {
        const float* d = op.in[t].d;
        for (int e = 0; e < op.in[0].n / 2; ++e) {
            if (d[e] == d[e]) {
                char msg[200];
                snprintf(msg, sizeof msg,
                         "thread %d wrote accumulator %d of a wgmma in flight (between the issue and the wait)",
                         (int)(&g - g_block->wgroups.data()) * 128 + t, e);
                fail(msg);
            }
        }
    }
    for (size_t r = 0; r < op.rows.size(); ++r) {
        if (memcmp(g_block->smem.data() + op.rows[r], op.bytes.data() + 16 * r, 16) != 0) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "shared offset %zu, an operand of a wgmma in flight, changed between its issue and the "
                     "wait_group that retires it (a race on a GPU)",
                     op.rows[r]);
            fail(msg);
        }
    }
    const WgIn& f = op.in[0];
    const Desc da = f.a_regs ? Desc{0, 0, 0} : decode_desc(f.da, "A"), db = decode_desc(f.db, "B");
    auto A = [&](int row, int k) {
        if (!f.a_regs) return smem_bf16(desc_at(da, row, k, f.tnsp_a));
        const int w = row / 16, r = row % 16;
        const unsigned int reg = op.in[w * 32 + 4 * (r % 8) + (k % 8) / 2].a[(r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
        return bf16_to_f32((unsigned short)((k & 1) ? reg >> 16 : reg));
    };
    // A and B widened once: 64 x 16 and N x 16
    float a[64][16];
    std::vector<float> bm((size_t)f.n * 16);
    for (int r = 0; r < 64; ++r)
        for (int k = 0; k < 16; ++k) a[r][k] = A(r, k);
    for (int c = 0; c < f.n; ++c)
        for (int k = 0; k < 16; ++k) bm[(size_t)c * 16 + k] = smem_bf16(desc_at(db, c, k, f.tnsp_b));
    for (int t = 0; t < 128; ++t) {
        const WgIn& in = op.in[t];
        std::vector<float>& v = g.shadow[in.d];
        const int w = t / 32, gr = (t % 32) / 4, tg = t % 4;
        for (int j = 0; j < f.n / 8; ++j) {
            for (int e = 0; e < 4; ++e) {
                const int row = 16 * w + gr + (e >= 2 ? 8 : 0), col = 8 * j + 2 * tg + (e & 1);
                float acc = f.scale_d ? v[(size_t)(4 * j + e)] : 0.0f;
                for (int k = 0; k < 16; ++k) acc += a[row][k] * bm[(size_t)col * 16 + k];
                v[(size_t)(4 * j + e)] = acc;
            }
        }
        if (!later_uses(g, i, t)) {
            memcpy(in.d, v.data(), v.size() * sizeof(float));
            g.shadow.erase(in.d);
        }
    }
}

// One warpgroup instruction: deposit this thread's operands; the last of the 128 to arrive runs
// `complete`.
void wg_collective(const char* what, const WgIn& in, void (*complete)(WarpGroup&, int)) {
    Block& b = *g_block;
    Thread* t = b.cur;
    const size_t gi = (size_t)t->index / 128;
    char msg[300];
    if (gi >= b.wgroups.size()) {
        snprintf(msg, sizeof msg, "%s by thread %d, whose warpgroup is incomplete (the block has %zu threads)", what,
                 t->index, b.threads.size());
        fail(msg);
    }
    for (size_t w = 4 * gi; w < 4 * gi + 4; ++w) {
        if (b.warps[w].live != 32) {
            snprintf(msg, sizeof msg, "%s (thread %d) with lanes of warp %zu returned: undefined on a GPU", what,
                     t->index, w);
            fail(msg);
        }
    }
    WarpGroup& g = b.wgroups[gi];
    if (g.arrived == 0) {
        g.what = what;
    } else if (strcmp(g.what, what) != 0) {
        snprintf(msg, sizeof msg, "threads of warpgroup %zu meet at different instructions: %s and %s", gi, g.what, what);
        fail(msg);
    }
    g.in[t->index % 128] = in;
    g.arrived += 1;
    if (g.arrived == 128) {
        complete(g, (int)gi);
        g.arrived = 0;
        wake_all(g.waiting);
    } else {
        g.waiting.push_back(t);
        wait_here(what, 0);
    }
}

}  // namespace

unsigned int smem_addr(const void* p) {
    Block& b = *g_block;
    const unsigned char* c = static_cast<const unsigned char*>(p);
    if (c < b.smem.data() || c > b.smem.data() + b.smem.size())
        fail("a shared-memory address of a pointer outside dynamic shared memory (the emulator's wgmma reads "
             "dynamic shared memory only)");
    return (unsigned int)(c - b.smem.data());
}

void wgmma_fence() { g_block->cur->wg_fenced = true; }

void fence_proxy_async() {
    Block& b = *g_block;
    Thread* t = b.cur;
    for (size_t off : t->unfenced) {
        auto it = b.unfenced.find(off);
        if (it != b.unfenced.end() && it->second == t->index) b.unfenced.erase(it);
    }
    t->unfenced.clear();
}

void wgmma_bf16(float* d, int n, unsigned long long desc_a, const unsigned int* a_regs, unsigned long long desc_b,
                int scale_d, int tnsp_a, int tnsp_b) {
    WgIn in;
    in.d = d;
    if (a_regs) memcpy(in.a, a_regs, sizeof in.a);
    in.da = desc_a;
    in.db = desc_b;
    in.n = n;
    in.a_regs = a_regs != nullptr;
    in.scale_d = scale_d != 0;
    in.tnsp_a = tnsp_a;
    in.tnsp_b = tnsp_b;
    wg_collective("wgmma.mma_async", in, [](WarpGroup& g, int gi) {
        Block& b = *g_block;
        const WgIn& f = g.in[0];
        char msg[300];
        if (f.n < 8 || f.n > 256 || f.n % 8 != 0) {
            snprintf(msg, sizeof msg, "wgmma m64n%dk16: N must be a multiple of 8 in 8..256", f.n);
            fail(msg);
        }
        for (int t = 0; t < 128; ++t) {
            const WgIn& x = g.in[t];
            if (x.n != f.n || x.da != f.da || x.db != f.db || x.a_regs != f.a_regs || x.scale_d != f.scale_d ||
                x.tnsp_a != f.tnsp_a || x.tnsp_b != f.tnsp_b) {
                snprintf(msg, sizeof msg,
                         "threads 0 and %d of warpgroup %d give wgmma different operands (N %d / %d, descriptors "
                         "%#llx %#llx / %#llx %#llx)",
                         t, gi, f.n, x.n, f.da, f.db, x.da, x.db);
                fail(msg);
            }
            if (!b.threads[(size_t)(gi * 128 + t)].wg_fenced) {
                snprintf(msg, sizeof msg,
                         "wgmma.mma_async by thread %d with no wgmma.fence since its start or its last wait_group",
                         gi * 128 + t);
                fail(msg);
            }
        }
        WgOp op;
        if (!f.a_regs) operand_rows(decode_desc(f.da, "A"), 64, f.tnsp_a, op.rows);
        operand_rows(decode_desc(f.db, "B"), f.n, f.tnsp_b, op.rows);
        check_rows(op.rows);
        op.bytes.resize(16 * op.rows.size());
        for (size_t r = 0; r < op.rows.size(); ++r) memcpy(op.bytes.data() + 16 * r, b.smem.data() + op.rows[r], 16);
        for (int t = 0; t < 128; ++t) {
            float* p = g.in[t].d;
            for (auto& [q, v] : g.shadow) {
                if (q != p && q < p + f.n / 2 && p < q + v.size())
                    fail("wgmma accumulators in flight overlap another product's in flight, not at the same start");
            }
            auto it = g.shadow.find(p);
            if (it == g.shadow.end()) {
                g.shadow[p] = std::vector<float>(p, p + f.n / 2);
                const float nan = std::numeric_limits<float>::quiet_NaN();
                for (int i = 0; i < f.n / 2; ++i) p[i] = nan;
            } else if (it->second.size() != (size_t)f.n / 2) {
                fail("two wgmma in flight accumulate into the same registers with different N");
            }
        }
        memcpy(op.in, g.in, sizeof op.in);
        g.ops.push_back(std::move(op));
    });
}

void wgmma_commit() {
    // (a commit with no new product makes an empty group, as on the GPU)
    wg_collective("wgmma.commit_group", WgIn{}, [](WarpGroup& g, int) {
        for (WgOp& op : g.ops)
            if (op.group < 0) op.group = g.groups;
        g.groups += 1;
    });
}

void wgmma_wait(int pending) {
    WgIn in;
    in.pending = pending;
    wg_collective("wgmma.wait_group", in, [](WarpGroup& g, int gi) {
        const int keep = g.in[0].pending;
        for (int t = 0; t < 128; ++t) {
            if (g.in[t].pending != keep) fail("threads of a warpgroup wait for different numbers of wgmma groups");
        }
        // retire every committed group but the newest `keep`
        size_t landed = 0;
        while (landed < g.ops.size() && g.ops[landed].group >= 0 && g.ops[landed].group < g.groups - keep) {
            land_op(g, landed);
            landed += 1;
        }
        g.ops.erase(g.ops.begin(), g.ops.begin() + (long)landed);
        Block& b = *g_block;
        for (int t = 0; t < 128; ++t) b.threads[(size_t)(gi * 128 + t)].wg_fenced = false;
    });
}

}  // namespace simt
