// arbor SIMT host emulator: blocks, fibers, barriers, cp.async copies and launches.
//
// A block's threads are fibers on the calling host thread, run one at a time in a fixed order
// (a launch is a deterministic function of its inputs). A fiber runs until it reaches
// __syncthreads or a warp collective, where it waits until every thread the hardware would wait
// for has arrived; the last one to arrive completes the operation (for a collective, computes
// every lane's result from every lane's input) and wakes the others. When no fiber can run and
// some have not finished, the block could never finish on a GPU either: the launch fails with a
// description of where each thread waits.
//
// The warp collectives are in warp.cpp, Hopper's warpgroup wgmma in wgmma.cpp; what they share with
// this file (the block's state, waiting and failing) in internal.h.
#include "internal.h"

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
simt::internal::Block* simt::internal::g_block = nullptr;

namespace simt {

using namespace internal;

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

}  // namespace

namespace internal {

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

// Wake the threads that waited for a collective to complete (in a drawn order under shuffle).
void wake_all(std::vector<Thread*>& waiting) {
    g_shuffle.apply(waiting);
    for (Thread* o : waiting) wake(o);
    waiting.clear();
}

}  // namespace internal

namespace {

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

void trap() { fail("__trap(): the kernel stopped itself (a violated launch contract)"); }

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
