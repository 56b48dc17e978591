// arbor SIMT host emulator: what runtime.cpp, warp.cpp and wgmma.cpp share. The state of the block
// that runs (its threads, warps and warpgroups) and the calls that make the running thread wait,
// wake the threads a collective completes for, or fail the launch. Kernels never see it.
#pragma once
#include <deque>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime.h"

namespace simt {
namespace internal {

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

// The block running now (set by `run`, runtime.cpp).
extern Block* g_block;

// Fail the launch with `why`: the running thread never resumes.
void fail(const std::string& why);

// The running thread waits at `what` (line `line`) until a wake; the next ready one runs.
void wait_here(const char* what, int line);

// Wake the threads that waited for a barrier, warp collective or warpgroup instruction.
void wake_all(std::vector<Thread*>& waiting);

}  // namespace internal
}  // namespace simt
