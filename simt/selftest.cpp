// The SIMT emulator's self-test: its warp-level matrix instructions against a direct product,
// its barriers and shuffles on a block sum, and each misuse it must report (divergent barriers,
// a hang, lanes missing from a shuffle, an out-of-bounds write, too much shared memory), graph
// capture and replay, the counts of what ran, and the NaN fill of fresh memory. Prints cargo's summary line, so that
// scripts/test.sh counts it with the other tests.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "runtime.h"

extern "C" {
int cuMemAlloc_v2(unsigned long long*, size_t);
int cuMemFree_v2(unsigned long long);
int cuMemAllocAsync(unsigned long long*, size_t, void*);
int cuMemFreeAsync(unsigned long long, void*);
int cuDeviceGetMemPool(void**, int);
int cuMemPoolSetAttribute(void*, int, void*);
int cuMemPoolGetAttribute(void*, int, void*);
int cuMemPoolTrimTo(void*, size_t);
int cuMemcpyHtoD_v2(unsigned long long, const void*, size_t);
int cuMemcpyDtoH_v2(void*, unsigned long long, size_t);
int cuModuleLoadData(void**, const void*);
int cuModuleGetFunction(void**, void*, const char*);
int cuFuncSetAttribute(void*, int, int);
int cuLaunchKernel(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**, void**);
int cuStreamCreate(void**, unsigned);
int cuStreamSynchronize(void*);
int cuStreamBeginCapture_v2(void*, int);
int cuStreamEndCapture(void*, void**);
int cuGraphInstantiateWithFlags(void**, void*, unsigned long long);
int cuGraphLaunch(void*, void*);
int arbor_simt_counters(unsigned long long*, int);
const char* arbor_simt_last_report();
}

static int passed = 0, failed = 0;

static void check(bool ok, const char* what) {
    printf("selftest %s ... %s\n", what, ok ? "ok" : "FAILED");
    (ok ? passed : failed) += 1;
}

static unsigned long long dev(size_t bytes) {
    unsigned long long p = 0;
    cuMemAlloc_v2(&p, bytes);
    return p;
}

static void* fn(const char* name) {
    static void* module = nullptr;
    if (!module) {
        const char* ptx =
            ".target sm_90a\n.entry st_mma(\n.entry st_block_sum(\n.entry st_divergent_barrier(\n.entry st_hang(\n"
            ".entry st_exited_lanes(\n.entry st_add_one(\n.entry st_cp_async(\n.entry st_last_writer(\n.entry st_static_smem(\n.entry st_rounding(\n"
            ".entry st_wgmma(\n";
        if (cuModuleLoadData(&module, ptx) != 0) return nullptr;
    }
    void* f = nullptr;
    cuModuleGetFunction(&f, module, name);
    return f;
}

static unsigned short bf16(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    return (unsigned short)(u >> 16);  // the inputs below are exact in bf16
}

static int launch(const char* name, unsigned grid, unsigned block, unsigned smem, std::vector<void*> args,
                  void* stream = nullptr) {
    return cuLaunchKernel(fn(name), grid, 1, 1, block, 1, 1, smem, stream, args.data(), nullptr);
}

int main() {
    // ldmatrix + mma.sync against the direct product (small integers: exact in bf16 and f32)
    {
        std::vector<float> A(256), B(128);
        for (int i = 0; i < 256; ++i) A[i] = (float)((i * 7) % 11 - 5);
        for (int i = 0; i < 128; ++i) B[i] = (float)((i * 5) % 9 - 4);  // B[k * 8 + n]
        std::vector<unsigned short> a(256), bt(128), b(128);
        for (int i = 0; i < 256; ++i) a[i] = bf16(A[i]);
        for (int k = 0; k < 16; ++k)
            for (int n = 0; n < 8; ++n) bt[n * 16 + k] = bf16(B[k * 8 + n]), b[k * 8 + n] = bf16(B[k * 8 + n]);
        unsigned long long da = dev(512), dbt = dev(256), db = dev(256), d1 = dev(512), d2 = dev(512);
        cuMemcpyHtoD_v2(da, a.data(), 512);
        cuMemcpyHtoD_v2(dbt, bt.data(), 256);
        cuMemcpyHtoD_v2(db, b.data(), 256);
        int r = launch("st_mma", 1, 32, 1024, {&d1, &d2, &da, &dbt, &db});
        std::vector<float> o1(128), o2(128);
        cuMemcpyDtoH_v2(o1.data(), d1, 512);
        cuMemcpyDtoH_v2(o2.data(), d2, 512);
        bool same = r == 0;
        for (int m = 0; m < 16; ++m)
            for (int n = 0; n < 8; ++n) {
                float want = 0;
                for (int k = 0; k < 16; ++k) want += A[m * 16 + k] * B[k * 8 + n];
                same = same && o1[m * 8 + n] == want && o2[m * 8 + n] == want;
            }
        check(same, "ldmatrix (plain and .trans) and mma.sync m16n8k16 give the direct product");
    }
    // shuffles and a barrier: a block sum per block
    {
        std::vector<float> x(4 * 256);
        for (size_t i = 0; i < x.size(); ++i) x[i] = (float)(i % 13);
        unsigned long long dx = dev(x.size() * 4), dout = dev(16);
        cuMemcpyHtoD_v2(dx, x.data(), x.size() * 4);
        int r = launch("st_block_sum", 4, 256, 0, {&dout, &dx});
        float out[4];
        cuMemcpyDtoH_v2(out, dout, 16);
        bool ok = r == 0;
        for (int b = 0; b < 4; ++b) {
            float want = 0;
            for (int i = 0; i < 256; ++i) want += x[b * 256 + i];
            ok = ok && out[b] == want;
        }
        check(ok, "warp shuffles and __syncthreads give each block's sum");
    }
    {
        // (1 + 2^-12)^2 - (1 + 2^-11): 0 when the product is rounded first, 2^-24 when fused
        unsigned long long o = dev(8);
        float a = 1.0f + 1.0f / 4096, c = -(1.0f + 1.0f / 2048), got[2];
        launch("st_rounding", 1, 32, 0, {&o, &a, &a, &c, &a});
        cuMemcpyDtoH_v2(got, o, 8);
        printf("  (a * b + c in a kernel: %g, i.e. %s)\n", got[1], got[1] != 0.0f ? "fused" : "not fused");
        check(got[0] == 0.0f, "__fmul_rn and __fadd_rn round each operation (never fused)");
    }
    {
        // wgmma: two products into one accumulator in one commit group (shared A and B, register A and
        // transposed B) against the direct product (small integers: exact); the accumulators read
        // as NaN between the issue and the wait; each missing fence or wait fails the launch
        std::vector<float> a(1024), b(1024), a2(1024), b2(1024);
        std::vector<unsigned short> ha(1024), hb(1024), ha2(1024), hb2(1024);
        for (int i = 0; i < 1024; ++i) {
            a[i] = (float)((i * 7) % 11 - 5), b[i] = (float)((i * 5) % 9 - 4);
            a2[i] = (float)((i * 3) % 7 - 3), b2[i] = (float)((i * 11) % 5 - 2);
            ha[i] = bf16(a[i]), hb[i] = bf16(b[i]), ha2[i] = bf16(a2[i]), hb2[i] = bf16(b2[i]);
        }
        unsigned long long da = dev(2048), db = dev(2048), da2 = dev(2048), db2 = dev(2048), o = dev(4096 * 4),
                           early = dev(128 * 4);
        cuMemcpyHtoD_v2(da, ha.data(), 2048);
        cuMemcpyHtoD_v2(db, hb.data(), 2048);
        cuMemcpyHtoD_v2(da2, ha2.data(), 2048);
        cuMemcpyHtoD_v2(db2, hb2.data(), 2048);
        auto run = [&](int mode) { return launch("st_wgmma", 1, 128, 6144, {&o, &early, &da, &db, &da2, &db2, &mode}); };
        const bool ran = run(0) == 0;
        std::vector<float> got(4096), nan(128);
        cuMemcpyDtoH_v2(got.data(), o, 4096 * 4);
        cuMemcpyDtoH_v2(nan.data(), early, 128 * 4);
        bool same = ran;
        for (int r = 0; r < 64; ++r) {
            for (int c = 0; c < 64; ++c) {
                float want = 0.0f;
                for (int k = 0; k < 16; ++k) want += a[r * 16 + k] * b[c * 16 + k] + a2[r * 16 + k] * b2[k * 64 + c];
                same = same && got[r * 64 + c] == want;
            }
        }
        bool all_nan = true;
        for (float x : nan) all_nan = all_nan && x == 1.0f;
        check(same && all_nan,
              "wgmma m64n64k16 (shared and register A, K- and MN-major B) gives the direct product at the wait");
        // each misuse fails the launch for its own reason
        auto refused = [&](int mode, const char* says) {
            return run(mode) != 0 && strstr(arbor_simt_last_report(), says) != nullptr;
        };
        check(refused(1, "fence.proxy.async") && refused(2, "no wgmma.fence") && refused(3, "no wait_group") &&
                  refused(4, "changed between its issue") && refused(5, "has not landed") &&
                  refused(6, "wrote accumulator") && refused(8, "overlap"),
              "wgmma without the proxy fence, the copies' wait, wgmma.fence or its wait, with an operand or an "
              "accumulator written in flight, or into overlapping accumulators, fails the launch naming why");
        std::vector<float> again(4096);
        const bool ran7 = run(7) == 0;
        cuMemcpyDtoH_v2(again.data(), o, 4096 * 4);
        check(ran7 && again == got, "an empty wgmma commit group counts: wait_group 1 retires the group before it");
        // a wgmma kernel from PTX for plain sm_90 is a trap on a GPU: its launch fails
        void *plain = nullptr, *f = nullptr;
        const bool loaded = cuModuleLoadData(&plain, ".target sm_90\n.entry st_wgmma(\n") == 0 &&
                            cuModuleGetFunction(&f, plain, "st_wgmma") == 0;
        int mode = 0;
        std::vector<void*> args{&o, &early, &da, &db, &da2, &db2, &mode};
        const bool trapped = loaded && cuLaunchKernel(f, 1, 1, 1, 128, 1, 1, 6144, nullptr, args.data(), nullptr) != 0 &&
                             strstr(arbor_simt_last_report(), "another target than sm_90a") != nullptr;
        check(trapped, "a wgmma kernel from PTX for another target than sm_90a fails its launch (a trap on a GPU)");
    }
    unsigned long long scratch = dev(4096);
    check(launch("st_divergent_barrier", 1, 64, 0, {&scratch}) != 0, "barriers on two source lines fail the launch");
    check(launch("st_hang", 1, 64, 0, {&scratch}) != 0, "a block that can never finish fails the launch (no hang)");
    check(launch("st_exited_lanes", 1, 32, 0, {&scratch}) != 0, "a shuffle with lanes that returned fails the launch");
    {
        void* f = fn("st_cp_async");
        bool refused = launch("st_cp_async", 1, 32, 60 * 1024, {&scratch, &scratch}) != 0;
        bool raised = cuFuncSetAttribute(f, 8, 60 * 1024) == 0;
        bool runs = launch("st_cp_async", 1, 32, 60 * 1024, {&scratch, &scratch}) == 0;
        bool too_much = cuFuncSetAttribute(f, 8, 300 * 1024) != 0;
        check(refused && raised && runs && too_much,
              "dynamic shared memory over 48 KiB needs the attribute, and the device's limit holds");
    }
    {
        // a module's PTX gives each entry its __launch_bounds__ and static shared bytes
        void* mod = nullptr;
        void* f = nullptr;
        const char* ptx = ".visible .entry st_add_one(\n.param .u64 a\n)\n.maxntid 64, 1, 1\n{\n"
                          "\t.shared .align 4 .b8 big[40000];\n\tst.shared.f32 [big], 1.0;\n}\n";
        cuModuleLoadData(&mod, ptx);
        cuModuleGetFunction(&f, mod, "st_add_one");
        unsigned long long x = dev(1024 * 4);
        int n = 0;
        std::vector<void*> args = {&x, &x, &n};
        const bool bounds = cuLaunchKernel(f, 1, 1, 1, 128, 1, 1, 0, nullptr, args.data(), nullptr) != 0 &&
                            cuLaunchKernel(f, 1, 1, 1, 64, 1, 1, 0, nullptr, args.data(), nullptr) == 0;
        const bool default_dyn = cuLaunchKernel(f, 1, 1, 1, 64, 1, 1, 10000, nullptr, args.data(), nullptr) != 0;
        const bool over = cuFuncSetAttribute(f, 8, 227 * 1024 - 30000) != 0;
        check(bounds && default_dyn && over,
              "__launch_bounds__ and static shared memory from the PTX limit launches and attributes");
    }
    {
        std::vector<unsigned short> src(32 * 8);
        for (size_t i = 0; i < src.size(); ++i) src[i] = (unsigned short)(i + 100);
        unsigned long long dsrc = dev(src.size() * 2), dout = dev(96 * 4);
        cuMemcpyHtoD_v2(dsrc, src.data(), src.size() * 2);
        int r = launch("st_cp_async", 1, 32, 512, {&dout, &dsrc});
        float out[96];
        cuMemcpyDtoH_v2(out, dout, sizeof out);
        bool ok = r == 0;
        for (int t = 0; t < 32; ++t)
            ok = ok && out[3 * t] == 7.0f && out[3 * t + 1] == 7.0f && out[3 * t + 2] == (float)(t * 8 + 100);
        check(ok, "cp.async lands at the wait for its committed group (not at the issue, not uncommitted)");
    }
    {
        unsigned long long p = dev(64);
        float got[16];
        cuMemcpyDtoH_v2(got, p, sizeof got);
        bool nan = true;
        for (float g : got) nan = nan && std::isnan(g);
        check(nan, "fresh device memory reads as NaN");
        unsigned long long o = dev(8);
        float s2[2];
        launch("st_static_smem", 2, 32, 0, {&o});
        cuMemcpyDtoH_v2(s2, o, 8);
        check(std::isnan(s2[0]) && std::isnan(s2[1]), "static shared memory reads as NaN in every block");
    }
    {
        unsigned long long x = dev(256 * 4), y = dev(256 * 4);
        std::vector<float> zero(256, 0.0f), out(256);
        unsigned long long c0[13], c1[13];
        const bool thirteen = arbor_simt_counters(c0, 13) == 13;
        cuMemcpyHtoD_v2(x, zero.data(), 1024);
        void* s = nullptr;
        cuStreamCreate(&s, 0);
        int n = 256;
        cuStreamBeginCapture_v2(s, 0);
        launch("st_add_one", 2, 128, 0, {&y, &x, &n}, s);
        launch("st_add_one", 2, 128, 0, {&x, &y, &n}, s);
        void* graph = nullptr;
        void* exec = nullptr;
        const bool sync_refused = cuStreamSynchronize(s) != 0;
        cuStreamEndCapture(s, &graph);
        const bool sync_after = cuStreamSynchronize(s) == 0;
        cuMemcpyDtoH_v2(out.data(), x, 1024);
        const bool captured_not_run = out[0] == 0.0f;
        cuGraphInstantiateWithFlags(&exec, graph, 0);
        cuGraphLaunch(exec, s);
        cuGraphLaunch(exec, s);
        cuMemcpyDtoH_v2(out.data(), x, 1024);
        check(captured_not_run && out[0] == 4.0f && out[255] == 4.0f && sync_refused && sync_after,
              "a captured stream records its launches (a synchronize inside fails), the graph replays them");
        arbor_simt_counters(c1, 13);
        unsigned long long d[13];
        for (int i = 0; i < 13; ++i) d[i] = c1[i] - c0[i];
        // kernels run (captured ones run at the replays), copies up and down with their bytes, host
        // waits (not the refused one), graph launches
        check(thirteen && d[0] == 4 && d[1] == 0 && d[2] == 1 && d[3] == 1024 && d[4] == 2 && d[5] == 2048 && d[6] == 0 &&
                  d[8] == 1 && d[9] == 2 && d[10] == 0,
              "the counts of kernels, copies, host waits and graph launches are what ran");
    }
    {
        // the stream-ordered pool: what a synchronisation hands back follows the release threshold
        void* pool = nullptr;
        cuDeviceGetMemPool(&pool, 0);
        unsigned long long c0[13], c1[13], c2[13], c3[13];
        auto cycle = [&](unsigned long long* before, unsigned long long* after) {
            unsigned long long a = 0, b = 0;
            arbor_simt_counters(before, 13);
            cuMemAllocAsync(&a, 1 << 20, nullptr);
            cuMemAllocAsync(&b, 1 << 16, nullptr);
            cuMemFreeAsync(a, nullptr);
            cuMemFreeAsync(b, nullptr);
            cuStreamSynchronize(nullptr);
            arbor_simt_counters(after, 13);
        };
        unsigned long long keep = ~0ull, zero = 0, got = 1, high = 0;
        cuMemPoolSetAttribute(pool, 4, &zero);
        cycle(c0, c1);  // grows: nothing is kept
        const bool released = c1[11] - c0[11] == 2 && c1[12] - c0[12] == (1 << 20) + (1 << 16);
        cycle(c0, c1);  // grows again: the synchronisation gave everything back
        const bool again = c1[11] - c0[11] == 2;
        cuMemPoolSetAttribute(pool, 4, &keep);
        cycle(c0, c1);  // grows once more: the memory was given back before the threshold changed
        cuMemPoolSetAttribute(pool, 8, &zero);
        cycle(c2, c3);  // reuses what the last cycle kept
        cuMemPoolGetAttribute(pool, 8, &high);
        const bool kept = c3[11] - c2[11] == 0 && high == (1 << 20) + (1 << 16);
        cuMemPoolTrimTo(pool, 0);
        cycle(c2, c3);  // grows: the trim gave everything back
        cuMemPoolGetAttribute(pool, 4, &got);
        check(released && again && c1[11] - c0[11] == 2 && kept && c3[11] - c2[11] == 2 && got == keep,
              "the memory pool keeps freed memory up to its release threshold at a synchronisation");
        cuMemPoolSetAttribute(pool, 4, &zero);
        cuMemPoolTrimTo(pool, 0);
    }
    {
        // arbor captures its decode steps in the thread-local mode: other threads go on
        void* s = nullptr;
        cuStreamCreate(&s, 0);
        cuStreamBeginCapture_v2(s, 1);
        const bool here = cuStreamSynchronize(s) != 0;
        bool other = false;
        std::thread t([&] { other = cuStreamSynchronize(nullptr) == 0; });
        t.join();
        void* graph = nullptr;
        cuStreamEndCapture(s, &graph);
        check(here && other && cuStreamSynchronize(s) == 0,
              "a thread-local capture refuses a synchronize on its own thread only");
    }
    {
        unsigned long long out = dev(8);
        float fwd[2], rev[2];
        launch("st_last_writer", 2, 64, 0, {&out});
        cuMemcpyDtoH_v2(fwd, out, 8);
        setenv("ARBOR_SIMT_ORDER", "reverse", 1);
        launch("st_last_writer", 2, 64, 0, {&out});
        cuMemcpyDtoH_v2(rev, out, 8);
        setenv("ARBOR_SIMT_ORDER", "shuffle", 1);
        std::vector<float> seen;
        for (int seed = 1; seed <= 4; ++seed) {
            setenv("ARBOR_SIMT_SEED", std::to_string(seed).c_str(), 1);
            float got[2];
            launch("st_last_writer", 2, 64, 0, {&out});
            cuMemcpyDtoH_v2(got, out, 8);
            seen.push_back(got[0]);
            seen.push_back(got[1]);
        }
        unsetenv("ARBOR_SIMT_ORDER");
        unsetenv("ARBOR_SIMT_SEED");
        bool varied = false;
        for (float v : seen) varied = varied || (v != seen[0]);
        check(fwd[0] == 63.0f && fwd[1] == 63.0f && rev[0] == 0.0f && rev[1] == 0.0f,
              "ARBOR_SIMT_ORDER=reverse runs the threads in the other order (a race shows as another result)");
        check(varied, "ARBOR_SIMT_ORDER=shuffle runs them in seeded random orders");
    }
    {
        // a write past the end of an allocation faults in a child process, naming the kernel
        int pipefd[2];
        if (pipe(pipefd) != 0) return 2;
        pid_t pid = fork();
        if (pid == 0) {
            dup2(pipefd[1], 2);
            unsigned long long small = dev(1000 * 4), big = dev(8192 * 4);
            int n = 8192;
            launch("st_add_one", 64, 128, 0, {&small, &big, &n});
            _exit(0);
        }
        close(pipefd[1]);
        char buf[4096] = {0};
        ssize_t got = 0, r;
        while ((r = read(pipefd[0], buf + got, sizeof buf - 1 - (size_t)got)) > 0) got += r;
        int status = 0;
        waitpid(pid, &status, 0);
        check(WIFSIGNALED(status) && strstr(buf, "st_add_one") != nullptr,
              "a write past an allocation's end faults, naming the kernel");
    }
    printf("\ntest result: %s. %d passed; %d failed\n", failed ? "FAILED" : "ok", passed, failed);
    return failed ? 1 : 0;
}
