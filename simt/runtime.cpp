// arbor SIMT host emulator: blocks, fibers, barriers and warp collectives.
//
// A block's threads are fibers on the calling host thread, run one at a time in a fixed order
// (a launch is a deterministic function of its inputs). A fiber runs until it reaches
// __syncthreads or a warp collective, where it waits until every thread the hardware would wait
// for has arrived; the last one to arrive completes the operation (for a collective, computes
// every lane's result from every lane's input) and wakes the others. When no fiber can run and
// some have not finished, the block could never finish on a GPU either: the launch fails with a
// description of where each thread waits.
#include "runtime.h"
// bf16_to_f32, the kernels' own widening
#include "../cuda/common.cuh"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <unordered_map>

// plain globals: launches run one at a time (the lock in `run`)
simt::Ctx* simt_current = nullptr;

namespace simt {
namespace {

// ---------------------------------------------------------------------------------------------
// Fibers: a stack each and a switch that saves the callee-saved registers.
// ---------------------------------------------------------------------------------------------

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr size_t PAGE = 4096;

extern "C" void simt_switch(void** save_sp, void* to_sp);

#if defined(__x86_64__)
asm(R"(
.text
.globl simt_switch
.hidden simt_switch
.type simt_switch,@function
simt_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size simt_switch,.-simt_switch
)");
#elif defined(__aarch64__)
asm(R"(
.text
.globl simt_switch
.hidden simt_switch
.type simt_switch,%function
simt_switch:
    sub sp, sp, #176
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #176
    ret
.size simt_switch,.-simt_switch
)");
#else
#error "the SIMT emulator's fiber switch is written for x86-64 and aarch64"
#endif

struct Copy {
    void* dst;
    const void* src;
    int bytes;
};

enum class State { Ready, Waiting, Done };

struct Thread {
    Ctx ctx;
    void* sp = nullptr;
    char* stack = nullptr;  // lowest usable byte (a guard page lies below)
    State state = State::Ready;
    int index = 0;  // linear index in the block
    const char* waits_at = "";
    int waits_line = 0;
    std::vector<Copy> pending;  // cp.async copies not yet landed, in issue order
    size_t committed = 0;       // how many of them belong to committed groups
    bool wg_fenced = false;     // wgmma.fence since the start or the last wgmma.wait_group
    std::vector<size_t> unfenced;  // dynamic shared-memory rows its cp.async wrote, no proxy fence since
};

constexpr int SLOT = 64;

struct Warp {
    int live = 0;     // lanes not finished
    int arrived = 0;  // lanes in the current collective
    const char* what = nullptr;
    int line = 0;
    unsigned char in[32][SLOT];
    unsigned char out[32][SLOT];
    std::vector<Thread*> waiting;
};

using Combine = void (*)(Warp& w);

// One thread's operands of a warpgroup instruction (wgmma.mma_async, commit_group, wait_group).
struct WgIn {
    float* d = nullptr;
    unsigned int a[4] = {0, 0, 0, 0};
    unsigned long long da = 0, db = 0;
    int n = 0, a_regs = 0, scale_d = 0, tnsp_a = 0, tnsp_b = 0, pending = 0;
};

// A wgmma.mma_async issued and not landed: every thread's operands, and its commit group (-1:
// not committed yet).
struct WgOp {
    WgIn in[128];
    int group = -1;
    std::vector<size_t> rows;          // the 16-byte shared-memory rows its operands read
    std::vector<unsigned char> bytes;  // what they held at the issue
};

// Four consecutive warps (the first one's index a multiple of 4): what wgmma runs on.
struct WarpGroup {
    int arrived = 0;
    const char* what = nullptr;
    WgIn in[128];
    std::vector<Thread*> waiting;
    std::vector<WgOp> ops;  // issued, not landed, in issue order
    int groups = 0;         // groups committed so far
    // the true values of accumulators with products in flight (the registers read as NaN until
    // the wait that lands them, so a read before it shows)
    std::map<float*, std::vector<float>> shadow;
};

struct Block {
    const Entry* entry = nullptr;
    void** params = nullptr;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    std::vector<WarpGroup> wgroups;
    // dynamic shared-memory rows (16-byte offsets) written by cp.async and not yet fenced for the
    // async proxy (fence.proxy.async), with the thread that wrote each
    std::unordered_map<size_t, int> unfenced;
    std::deque<Thread*> ready;
    int live = 0;
    int arrived = 0;  // threads at __syncthreads
    int barrier_line = 0;
    std::vector<Thread*> at_barrier;
    void* sched_sp = nullptr;
    Thread* cur = nullptr;
    std::string error;
    std::vector<unsigned char> smem;
};

Block* g_block = nullptr;

// Every kernel's static __shared__ variables (simt.h puts them in this section; the linker names
// its bounds). Weak: a build whose kernels have none still links.
extern "C" __attribute__((weak, visibility("hidden"))) unsigned char __start_simt_shared[];
extern "C" __attribute__((weak, visibility("hidden"))) unsigned char __stop_simt_shared[];

std::vector<char*>& stack_pool() {
    static std::vector<char*> pool;
    return pool;
}

char* take_stack(size_t i) {
    auto& pool = stack_pool();
    while (pool.size() <= i) {
        void* m = mmap(nullptr, STACK_BYTES + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            perror("simt: fiber stack");
            abort();
        }
        mprotect(m, PAGE, PROT_NONE);  // overflow faults instead of corrupting the next stack
        pool.push_back(static_cast<char*>(m) + PAGE);
    }
    return pool[i];
}

void to_scheduler(Thread* t) { simt_switch(&t->sp, g_block->sched_sp); }

// Leave a waiting thread for the next ready one directly (half the switches of a trip through the
// scheduler), or for the scheduler when none is ready.
void to_next(Thread* t) {
    Block& b = *g_block;
    if (b.ready.empty() || !b.error.empty()) {
        to_scheduler(t);
        return;
    }
    Thread* n = b.ready.front();
    b.ready.pop_front();
    b.cur = n;
    simt_current = &n->ctx;
    simt_switch(&t->sp, n->sp);
}

void fail(const std::string& why) {
    Block& b = *g_block;
    if (b.error.empty()) b.error = why;
    Thread* t = b.cur;
    t->state = State::Waiting;
    t->waits_at = "a failed check";
    to_scheduler(t);  // never resumed: the launch is abandoned
    abort();
}

void wait_here(const char* what, int line) {
    Thread* t = g_block->cur;
    t->state = State::Waiting;
    t->waits_at = what;
    t->waits_line = line;
    to_next(t);
}

void wake(Thread* t) {
    t->state = State::Ready;
    g_block->ready.push_back(t);
}

// Land the first `n` pending copies of a thread. Copies into dynamic shared memory are generic-proxy
// writes that wgmma (the async proxy) may read only after the writer's fence.proxy.async.
void land_copies(Thread* t, size_t n) {
    Block& b = *g_block;
    for (size_t i = 0; i < n; ++i) {
        const Copy& c = t->pending[i];
        unsigned char tmp[16] = {0};
        if (c.bytes > 0) memcpy(tmp, c.src, (size_t)c.bytes);
        memcpy(c.dst, tmp, 16);
        const unsigned char* d = static_cast<const unsigned char*>(c.dst);
        if (d >= b.smem.data() && d < b.smem.data() + b.smem.size()) {
            const size_t off = (size_t)(d - b.smem.data());
            auto it = b.unfenced.find(off);
            if (it == b.unfenced.end() || it->second != t->index) {
                b.unfenced[off] = t->index;
                t->unfenced.push_back(off);
            }
        }
    }
    t->pending.erase(t->pending.begin(), t->pending.begin() + (long)n);
    t->committed -= n;
}

// A finished thread's copies all land (the hardware completes them whether waited for or not).
void flush_copies(Thread* t) {
    t->committed = t->pending.size();
    land_copies(t, t->pending.size());
}

// ARBOR_SIMT_ORDER=shuffle: a random order (seeded: ARBOR_SIMT_SEED, default 1) wherever the
// emulator chooses one: blocks, the threads of a block at the start and after every barrier and
// collective. Each launch draws from the seed and its launch number, so a run repeats.
struct Shuffle {
    bool on = false;
    unsigned long long state = 0;
    unsigned long long next() {  // splitmix64
        unsigned long long z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    template <class T>
    void apply(std::vector<T>& v) {
        if (!on) return;
        for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next() % i]);
    }
};
Shuffle g_shuffle;

// Wake the threads that waited for a collective to complete (in a drawn order under shuffle).
void wake_all(std::vector<Thread*>& waiting) {
    g_shuffle.apply(waiting);
    for (Thread* o : waiting) wake(o);
    waiting.clear();
}

void release_barrier(Block& b) {
    b.arrived = 0;
    wake_all(b.at_barrier);
}

void thread_exit() {
    Block& b = *g_block;
    Thread* t = b.cur;
    flush_copies(t);
    t->state = State::Done;
    b.live -= 1;
    Warp& w = b.warps[t->index / 32];
    w.live -= 1;
    if (w.arrived > 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "thread %d returned while lanes of its warp wait in %s (line %d)", t->index,
                 w.what, w.line);
        b.error = msg;
    }
    if ((size_t)t->index / 128 < b.wgroups.size()) {
        WarpGroup& g = b.wgroups[(size_t)t->index / 128];
        if (g.arrived > 0 || !g.ops.empty()) {
            char msg[256];
            snprintf(msg, sizeof msg, "thread %d returned while its warpgroup %s", t->index,
                     g.arrived > 0 ? "waits in a wgmma instruction" : "has wgmma products in flight (no wait_group)");
            b.error = msg;
        }
    }
    // threads that have exited count as arrived at a barrier, as on the hardware
    if (b.arrived > 0 && b.arrived == b.live) release_barrier(b);
    to_scheduler(t);
    abort();  // a finished fiber is never resumed
}

void fiber_main() {
    Block& b = *g_block;
    Thread* t = b.cur;
    b.entry->invoke(b.entry->fn, b.params);
    (void)t;
    thread_exit();
}

void prepare(Thread& t, char* stack) {
    t.stack = stack;
    // stack tops staggered by thread: otherwise every fiber's top frame maps to the same cache set
    // (the stacks are page aligned), and a switch misses the cache
    const size_t color = (size_t)(t.index % 64) * 64 + (size_t)((t.index / 64) % 16) * 4096;
    uintptr_t top = reinterpret_cast<uintptr_t>(stack + STACK_BYTES - color) & ~uintptr_t(15);
#if defined(__x86_64__)
    // popped by simt_switch: r15 r14 r13 r12 rbx rbp, then `ret` into fiber_main with the stack as
    // after a call (rsp = 8 mod 16)
    void** sp = reinterpret_cast<void**>(top - 64);
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    sp[6] = reinterpret_cast<void*>(&fiber_main);
    sp[7] = nullptr;
    t.sp = sp;
#else
    // restored by simt_switch: x19..x28, x29 (frame), x30 (link: where `ret` goes), d8..d15
    void** sp = reinterpret_cast<void**>(top - 176);
    for (int i = 0; i < 22; ++i) sp[i] = nullptr;
    sp[11] = reinterpret_cast<void*>(&fiber_main);
    t.sp = sp;
#endif
}

std::string describe_stuck(const Block& b) {
    std::map<std::string, std::vector<int>> where;
    for (const Thread& t : b.threads) {
        if (t.state == State::Done) continue;
        char key[160];
        snprintf(key, sizeof key, "%s (line %d)", t.waits_at, t.waits_line);
        where[key].push_back(t.index);
    }
    std::string s = "the block can never finish (a GPU would hang):";
    for (auto& [k, v] : where) {
        char part[200];
        snprintf(part, sizeof part, " %zu threads (first %d) wait at %s;", v.size(), v.front(), k.c_str());
        s += part;
    }
    int done = 0;
    for (const Thread& t : b.threads) done += t.state == State::Done;
    s += " " + std::to_string(done) + " have returned";
    return s;
}

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

std::mutex& registry_lock() {
    static std::mutex m;
    return m;
}

std::map<std::string, Entry>& registry() {
    static std::map<std::string, Entry> r;
    return r;
}


}  // namespace

// ---------------------------------------------------------------------------------------------
// What the kernels call
// ---------------------------------------------------------------------------------------------

void syncthreads(int line) {
    Block& b = *g_block;
    Thread* t = b.cur;
    if (b.arrived == 0) {
        b.barrier_line = line;
    } else if (b.barrier_line != line) {
        char msg[200];
        snprintf(msg, sizeof msg, "thread %d is at __syncthreads on line %d while others wait on line %d", t->index,
                 line, b.barrier_line);
        fail(msg);
    }
    b.arrived += 1;
    if (b.arrived == b.live) {
        release_barrier(b);
        return;
    }
    b.at_barrier.push_back(t);
    wait_here("__syncthreads", line);
}

unsigned char* dynamic_smem() { return g_block->smem.data(); }

void cp_async16(void* dst, const void* src, int bytes) {
    if (bytes < 0 || bytes > 16) fail("cp.async with a source size outside 0..16");
    if ((reinterpret_cast<uintptr_t>(dst) & 15) != 0 || (bytes > 0 && (reinterpret_cast<uintptr_t>(src) & 15) != 0))
        fail("cp.async of 16 bytes at an address that is not 16-byte aligned");
    g_block->cur->pending.push_back(Copy{dst, src, bytes});
}

void cp_commit() {
    Thread* t = g_block->cur;
    t->committed = t->pending.size();
}

// cp.async.wait_group 0: every committed group lands; copies issued since the last commit belong
// to no group and are not waited for (PTX ISA), so a kernel that forgets the commit reads stale data.
void cp_wait_all() {
    Thread* t = g_block->cur;
    land_copies(t, t->committed);
}

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

void register_entry(const char* name, void* fn, Invoke invoke, const unsigned char* sizes, int n) {
    std::lock_guard<std::mutex> g(registry_lock());
    registry()[name] = Entry{name, fn, invoke, std::vector<unsigned char>(sizes, sizes + n)};
}

const Entry* find_entry(const std::string& name) {
    std::lock_guard<std::mutex> g(registry_lock());
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : &it->second;
}

// ---------------------------------------------------------------------------------------------
// Launches
// ---------------------------------------------------------------------------------------------

namespace {
// the kernel running now, for the fault handler
const char* volatile g_running = nullptr;
Dim3 g_running_block;

void on_fault(int sig) {
    char msg[300];
    const char* k = g_running;
    int n = snprintf(msg, sizeof msg, "\nsimt: %s in kernel %s, block (%u, %u, %u)\n",
                     sig == SIGSEGV ? "segmentation fault (an out-of-bounds access?)" : "fatal signal",
                     k ? k : "(none)", g_running_block.x, g_running_block.y, g_running_block.z);
    if (n > 0) {
        ssize_t ignored = write(2, msg, (size_t)n);
        (void)ignored;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        static char alt[64 * 1024];
        stack_t ss{};
        ss.ss_sp = alt;
        ss.ss_size = sizeof alt;
        sigaltstack(&ss, nullptr);
        struct sigaction sa {};
        sa.sa_handler = on_fault;
        sa.sa_flags = SA_ONSTACK;
        sigaction(SIGSEGV, &sa, nullptr);
        sigaction(SIGBUS, &sa, nullptr);
    });
}
}  // namespace

namespace {
// ARBOR_SIMT_PROFILE=1: each kernel's launches and host seconds, printed at exit (largest first)
struct KernelTime {
    long launches = 0;
    double seconds = 0;
};
std::map<std::string, KernelTime>* g_profile = nullptr;

void print_profile() {
    std::vector<std::pair<double, std::string>> rows;
    double total = 0;
    for (auto& [name, t] : *g_profile) {
        rows.push_back({t.seconds, name});
        total += t.seconds;
    }
    std::sort(rows.rbegin(), rows.rend());
    fprintf(stderr, "simt profile: %.2f s in kernels\n", total);
    for (auto& [sec, name] : rows)
        fprintf(stderr, "  %8.3f s %8ld launches  %s\n", sec, (*g_profile)[name].launches, name.c_str());
}

struct Timer {
    const Entry& e;
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    ~Timer() {
        static const bool wanted = [] {
            const char* v = getenv("ARBOR_SIMT_PROFILE");
            return v && strcmp(v, "1") == 0;
        }();
        if (!wanted) return;
        if (!g_profile) {
            g_profile = new std::map<std::string, KernelTime>();
            atexit(print_profile);
        }
        KernelTime& k = (*g_profile)[e.name];
        k.launches += 1;
        k.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
};
}  // namespace

std::string run(const Entry& e, Dim3 grid, Dim3 block_dim, unsigned int smem_bytes, void** params) {
    static std::mutex one_launch_at_a_time;  // stacks and `static` shared memory are process-wide
    std::lock_guard<std::mutex> g(one_launch_at_a_time);
    Timer timer{e};
    install_fault_handler();
    const int n = (int)(block_dim.x * block_dim.y * block_dim.z);
    if (n <= 0 || n > 1024) return "a block of " + std::to_string(n) + " threads (the limit is 1024)";
    if (n % 32 != 0) return "a block of " + std::to_string(n) + " threads: the emulator runs full warps only";
    Block b;
    b.entry = &e;
    b.params = params;
    b.threads.resize((size_t)n);
    b.warps.resize((size_t)(n / 32));
    for (int i = 0; i < n; ++i) take_stack((size_t)i);
    g_block = &b;
    g_running = e.name.c_str();
    // ARBOR_SIMT_ORDER=reverse: blocks, and the threads of a block, start last to first; =shuffle:
    // random orders (above). A kernel whose result depends on the order (a race between blocks,
    // or between threads that do not meet at a barrier) then gives another answer than in the
    // default order.
    const char* order = getenv("ARBOR_SIMT_ORDER");
    const bool reverse = order && strcmp(order, "reverse") == 0;
    static unsigned long long launches = 0;
    launches += 1;
    g_shuffle.on = order && strcmp(order, "shuffle") == 0;
    if (g_shuffle.on) {
        const char* seed = getenv("ARBOR_SIMT_SEED");
        g_shuffle.state = (seed ? strtoull(seed, nullptr, 10) : 1) * 0x100000001b3ull + launches;
    }
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    std::vector<unsigned long long> block_order;
    if (g_shuffle.on) {
        block_order.resize(blocks);
        for (unsigned long long q = 0; q < blocks; ++q) block_order[q] = q;
        g_shuffle.apply(block_order);
    }
    std::vector<Thread*> start(n);
    for (unsigned long long q = 0; q < blocks; ++q) {
        const unsigned long long lin = g_shuffle.on ? block_order[q] : reverse ? blocks - 1 - q : q;
        const unsigned int bx = (unsigned int)(lin % grid.x), by = (unsigned int)((lin / grid.x) % grid.y),
                           bz = (unsigned int)(lin / ((unsigned long long)grid.x * grid.y));
        g_running_block = Dim3{bx, by, bz};
        // shared memory starts as garbage on a GPU: NaN here, static and dynamic, so a read
        // before a write (or of what the previous block left) shows
        b.smem.assign(smem_bytes + 16, 0xff);
        if (+__start_simt_shared && +__stop_simt_shared > +__start_simt_shared)
            memset(__start_simt_shared, 0xff, (size_t)(__stop_simt_shared - __start_simt_shared));
        b.ready.clear();
        b.live = n;
        b.arrived = 0;
        b.at_barrier.clear();
        for (auto& w : b.warps) {
            w.live = 32;
            w.arrived = 0;
            w.waiting.clear();
        }
        b.wgroups.clear();
        b.wgroups.resize((size_t)(n / 128));
        b.unfenced.clear();
        for (int i = 0; i < n; ++i) {
            Thread& t = b.threads[(size_t)i];
            t = Thread{};
            t.index = i;
            const unsigned int x = (unsigned int)i % block_dim.x;
            const unsigned int y = ((unsigned int)i / block_dim.x) % block_dim.y;
            const unsigned int z = (unsigned int)i / (block_dim.x * block_dim.y);
            t.ctx = Ctx{Dim3{x, y, z}, Dim3{bx, by, bz}, block_dim, grid};
            prepare(t, stack_pool()[(size_t)i]);
            start[(size_t)(reverse ? n - 1 - i : i)] = &t;
        }
        g_shuffle.apply(start);
        for (Thread* t : start) b.ready.push_back(t);
        while (!b.ready.empty() && b.error.empty()) {
            Thread* t = b.ready.front();
            b.ready.pop_front();
            b.cur = t;
            simt_current = &t->ctx;
            simt_switch(&b.sched_sp, t->sp);
        }
        simt_current = nullptr;
        if (b.error.empty() && b.live > 0) b.error = describe_stuck(b);
        if (!b.error.empty()) {
            char where[120];
            snprintf(where, sizeof where, "kernel %s, block (%u, %u, %u): ", e.name.c_str(), bx, by, bz);
            g_block = nullptr;
            g_running = nullptr;
            return where + b.error;
        }
    }
    g_block = nullptr;
    g_running = nullptr;
    return "";
}

}  // namespace simt
