// arbor SIMT host emulator: the warp collectives (shuffles, ldmatrix, mma.sync m16n8k16). A lane
// deposits its input and waits until all 32 lanes of its warp have arrived; the last to arrive
// computes every lane's result from every lane's input and wakes the others.
#include "internal.h"
// bf16_to_f32, the kernels' own widening
#include "../cuda/common.cuh"

#include <cstdio>

namespace simt {

using namespace internal;

namespace {

using Combine = void (*)(Warp& w);

// One warp collective: deposit this lane's input, and when the whole warp is in, compute every
// lane's output. Returns this lane's output slot.
const unsigned char* collective(const char* what, int line, const void* in, size_t n, Combine combine) {
    Block& b = *g_block;
    Thread* t = b.cur;
    const int lane = t->index & 31;
    Warp& w = b.warps[t->index / 32];
    if (w.live != 32) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s (line %d) with %d of 32 lanes alive (thread %d): undefined on a GPU", what,
                 line, w.live, t->index);
        fail(msg);
    }
    if (w.arrived == 0) {
        w.what = what;
        w.line = line;
    } else if ((w.what != what && strcmp(w.what, what) != 0) || w.line != line) {
        char msg[300];
        snprintf(msg, sizeof msg, "lanes of warp %d meet at different collectives: %s (line %d) and %s (line %d)",
                 t->index / 32, w.what, w.line, what, line);
        fail(msg);
    }
    memcpy(w.in[lane], in, n);
    w.arrived += 1;
    if (w.arrived == 32) {
        combine(w);
        w.arrived = 0;
        wake_all(w.waiting);
    } else {
        w.waiting.push_back(t);
        wait_here(what, line);
    }
    return w.out[lane];
}
}  // namespace

unsigned long long shfl(const char* what, unsigned int mask, unsigned long long v, int arg, bool xor_lanes) {
    if (mask != 0xffffffffu) fail("a shuffle with a partial lane mask (the emulator runs full warps only)");
    struct In {
        unsigned long long v;
        int arg;
        int xor_lanes;
    } in{v, arg, xor_lanes};
    const unsigned char* out = collective(what, 0, &in, sizeof in, [](Warp& w) {
        for (int l = 0; l < 32; ++l) {
            In me;
            memcpy(&me, w.in[l], sizeof me);
            const int src = me.xor_lanes ? (l ^ me.arg) & 31 : me.arg & 31;
            In from;
            memcpy(&from, w.in[src], sizeof from);
            memcpy(w.out[l], &from.v, 8);
        }
    });
    unsigned long long r;
    memcpy(&r, out, 8);
    return r;
}

void ldmatrix_x4(unsigned int* r, const unsigned short* row, bool trans) {
    if ((reinterpret_cast<uintptr_t>(row) & 15) != 0) fail("ldmatrix row address not 16-byte aligned");
    struct In {
        const unsigned short* row;
        int trans;
    } in{row, trans};
    const unsigned char* out = collective(trans ? "ldmatrix.trans" : "ldmatrix", 0, &in, sizeof in, [](Warp& w) {
        const unsigned short* rows[32];
        int trans = 0;
        for (int l = 0; l < 32; ++l) {
            In me;
            memcpy(&me, w.in[l], sizeof me);
            rows[l] = me.row;
            trans = me.trans;
        }
        for (int l = 0; l < 32; ++l) {
            unsigned int regs[4];
            for (int i = 0; i < 4; ++i) {
                unsigned short lo, hi;
                if (!trans) {
                    const unsigned short* src = rows[8 * i + l / 4];
                    lo = src[2 * (l % 4)];
                    hi = src[2 * (l % 4) + 1];
                } else {
                    lo = rows[8 * i + 2 * (l % 4)][l / 4];
                    hi = rows[8 * i + 2 * (l % 4) + 1][l / 4];
                }
                regs[i] = (unsigned int)lo | ((unsigned int)hi << 16);
            }
            memcpy(w.out[l], regs, sizeof regs);
        }
    });
    memcpy(r, out, 16);
}

void mma_16816(float* d, const unsigned int* a, const unsigned int* b) {
    struct In {
        unsigned int a[4];
        unsigned int b[2];
        float c[4];
    } in;
    memcpy(in.a, a, sizeof in.a);
    memcpy(in.b, b, sizeof in.b);
    memcpy(in.c, d, sizeof in.c);
    const unsigned char* out = collective("mma.sync.m16n8k16", 0, &in, sizeof in, [](Warp& w) {
        In all[32];
        for (int l = 0; l < 32; ++l) memcpy(&all[l], w.in[l], sizeof(In));
        // A[row][k]: lane 4 (row % 8) + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half k % 2
        auto A = [&](int row, int k) {
            const unsigned int r = all[4 * (row % 8) + (k % 8) / 2].a[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
            return bf16_to_f32((unsigned short)((k & 1) ? r >> 16 : r));
        };
        // B[k][n]: lane 4 n + (k % 8) / 2, register (k >= 8), half k % 2
        auto B = [&](int k, int n) {
            const unsigned int r = all[4 * n + (k % 8) / 2].b[k >= 8 ? 1 : 0];
            return bf16_to_f32((unsigned short)((k & 1) ? r >> 16 : r));
        };
        for (int l = 0; l < 32; ++l) {
            const int gr = l >> 2, tg = l & 3;
            float dl[4];
            for (int e = 0; e < 4; ++e) {
                const int row = gr + (e >= 2 ? 8 : 0), col = 2 * tg + (e & 1);
                float acc = all[l].c[e];
                for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
                dl[e] = acc;
            }
            memcpy(w.out[l], dl, sizeof dl);
        }
    });
    memcpy(d, out, 16);
}

}  // namespace simt
