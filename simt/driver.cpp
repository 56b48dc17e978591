// arbor SIMT host emulator: the CUDA driver API, cublasGemmEx and NCCL, as far as arbor (through
// cudarc) uses them, over host memory. Built as one library that answers to libcuda.so,
// libcublas.so and libnccl.so (scripts/simt_build.py), so that tests/cuda runs every GPU test body
// on a machine without a GPU: kernels are the real cuda/*.cu sources compiled for the host
// (runtime.cpp).
//
// What it checks that a GPU would only show as a crash or garbage:
//   * allocations end at a guard page (a read or write past the end faults, and the fault names
//     the kernel and block); fresh allocations and shared memory are filled with NaN bytes;
//   * copies, fills and cuBLAS operands must lie inside one allocation;
//   * a launch needs its dynamic shared memory allowed (the function attribute, the device limit);
//   * barriers and warp collectives every thread of which cannot arrive fail the launch.
// Streams run in issue order, at once (a valid schedule of any correct program); a stream being
// captured records its operations into the graph, which replays them in order.
//
// This file holds devices, contexts, memory, streams, events and graphs; module.cpp modules and
// launches, blas.cpp cuBLAS, nccl.cpp NCCL; driver.h what they share.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "driver.h"

using namespace simt::driver;

namespace {

// ---------------------------------------------------------------------------------------------
// The device: an sm_90-like GPU unless ARBOR_SIMT_CC / ARBOR_SIMT_SMEM_OPTIN say otherwise.
// ---------------------------------------------------------------------------------------------

int env_int(const char* k, int dflt) {
    const char* v = getenv(k);
    return v && *v ? atoi(v) : dflt;
}

int cc() { return env_int("ARBOR_SIMT_CC", 90); }
constexpr size_t TOTAL_MEM = 80ull << 30;

// The calling thread's last report (`arbor_simt_last_report`: the self-test checks that a misuse
// fails for the reason it provokes).
thread_local std::string last_report;

}  // namespace

namespace simt::driver {

int smem_optin() { return env_int("ARBOR_SIMT_SMEM_OPTIN", 227 * 1024); }

void report(const std::string& what) {
    fprintf(stderr, "simt: %s\n", what.c_str());
    last_report = what;
}

thread_local unsigned long long counts[C_N];

}  // namespace simt::driver

namespace {

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

struct Alloc {
    void* map;
    size_t map_len;
    size_t size;
    bool pooled;  // from cuMemAllocAsync: its free goes back to the pool
};

std::mutex mem_lock;
std::map<uintptr_t, Alloc> allocs;  // by start address
size_t allocated = 0;

// The stream-ordered pool (cuMemAllocAsync / cuMemFreeAsync), modelled by its byte counts, without
// fragmentation: a freed buffer's bytes stay in the pool, unused; an allocation no larger than the
// unused bytes takes from them, a larger one takes new memory from the device (counted:
// C_POOL_GROWS); at every host synchronisation unused bytes go back to the device until the pool
// holds (in use and unused) no more than the release threshold (the driver's default: 0), as
// cuMemPoolTrimTo does to its argument. The memory itself is mapped and unmapped per buffer as for cuMemAlloc, so
// that a use after free still faults. Each host thread has its own counts and its own threshold
// (tests run side by side in one process, each opening its device, as with `counts`: a test that
// changes the threshold does not change its neighbours').
thread_local unsigned long long pool_threshold = 0;
size_t pool_unused_total = 0;  // every thread's unused bytes (under mem_lock): device memory taken
thread_local size_t pool_unused = 0;
thread_local size_t pool_used = 0;
thread_local size_t pool_used_high = 0;
thread_local size_t pool_reserved_high = 0;

// Hand unused bytes of the calling thread's pool back to the device until it holds no more than
// `keep` (in use and unused; memory in use stays).
void pool_trim(size_t keep) {
    std::lock_guard<std::mutex> g(mem_lock);
    const size_t unused_kept = keep > pool_used ? keep - pool_used : 0;
    if (pool_unused > unused_kept) {
        pool_unused_total -= pool_unused - unused_kept;
        pool_unused = unused_kept;
    }
}

constexpr size_t PAGE = 4096;

void* device_alloc(size_t bytes) {
    const size_t body = (bytes + 255) & ~size_t(255);
    const size_t span = (body + PAGE - 1) & ~(PAGE - 1);
    void* m = mmap(nullptr, span + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    char* guard = static_cast<char*>(m) + span;
    mprotect(guard, PAGE, PROT_NONE);
    char* p = guard - body;
    memset(p, 0xff, body);  // a GPU's fresh memory is garbage: NaN here
    std::lock_guard<std::mutex> g(mem_lock);
    allocs[reinterpret_cast<uintptr_t>(p)] = Alloc{m, span + PAGE, bytes, false};
    allocated += bytes;
    return p;
}

// Free the allocation starting at `p`: false when none does. A pooled buffer's bytes stay in the
// calling thread's pool, unused.
bool device_free(uintptr_t p) {
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = allocs.find(p);
    if (it == allocs.end()) return false;
    munmap(it->second.map, it->second.map_len);
    allocated -= it->second.size;
    if (it->second.pooled) {
        // (a buffer another thread allocated leaves its bytes in this thread's pool)
        pool_used -= std::min(pool_used, it->second.size);
        pool_unused += it->second.size;
        pool_unused_total += it->second.size;
    }
    allocs.erase(it);
    return true;
}

}  // namespace

namespace simt::driver {

// Whether [p, p + n) lies inside one allocation.
bool inside(uintptr_t p, size_t n) {
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = allocs.upper_bound(p);
    if (it == allocs.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second.size;
}

std::string range_error(const char* what, uintptr_t p, size_t n) {
    char m[200];
    snprintf(m, sizeof m, "%s of %zu bytes at 0x%llx is not inside one device allocation", what, n,
             (unsigned long long)p);
    return m;
}

}  // namespace simt::driver

namespace {

// ---------------------------------------------------------------------------------------------
// Streams, events, graphs
// ---------------------------------------------------------------------------------------------

struct Graph {
    std::vector<Op> ops;
};

// cuStreamBeginCapture's modes: global (0), thread-local (1), relaxed (2).
constexpr int CAPTURE_THREAD_LOCAL = 1;

struct Stream {
    Graph* capture = nullptr;
    int capture_mode = 0;  // of the capture in progress (a thread-local one ends on its thread)
};

struct Event {
    std::chrono::steady_clock::time_point at{};
    bool recorded = false;
};

Stream default_stream;
std::mutex stream_lock;
int g_capturing = 0;               // streams captured in the global mode (under stream_lock)
thread_local int t_capturing = 0;  // streams this thread captures in the thread-local mode

// The count of captures in `mode` that refuse calls on this thread (a relaxed capture refuses none).
int& capturing(int mode) {
    static thread_local int relaxed = 0;
    return mode == CAPTURE_THREAD_LOCAL ? t_capturing : mode == 0 ? g_capturing : relaxed;
}

// A call that a capture forbids: the real driver fails it with
// CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the capture. A capture in the global mode
// forbids it on every thread; in the thread-local mode (arbor's decode graphs) only on the thread
// that captures (other threads, e.g. other tests, go on).
CUresult refused_while_capturing(const char* call) {
    std::lock_guard<std::mutex> g(stream_lock);
    if (g_capturing == 0 && t_capturing == 0) return OK;
    report(std::string(call) + " while a stream is being captured (not allowed: the capture fails)");
    return 900;  // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
}

// The host waits for the device (the work is done already: streams run at once).
CUresult synchronize(const char* call) {
    if (CUresult r = refused_while_capturing(call)) return r;
    counts[C_SYNCS] += 1;
    const unsigned long long keep = pool_threshold;
    pool_trim(keep > SIZE_MAX ? SIZE_MAX : (size_t)keep);
    return OK;
}

Stream* stream_of(void* s) {
    uintptr_t v = reinterpret_cast<uintptr_t>(s);
    return v <= 2 ? &default_stream : static_cast<Stream*>(s);  // 0, CU_STREAM_LEGACY, PER_THREAD
}

CUresult run_op(const Op& op) {
    std::string e = op();
    if (e.empty()) return OK;
    report(e);
    return e.find("is not inside one device allocation") != std::string::npos ? E_ILLEGAL_ADDRESS : E_LAUNCH_FAILED;
}

}  // namespace

namespace simt::driver {

CUresult enqueue(void* s, Op op) {
    Stream* st = stream_of(s);
    {
        std::lock_guard<std::mutex> g(stream_lock);
        if (st->capture) {
            st->capture->ops.push_back(std::move(op));
            return OK;
        }
    }
    return run_op(op);
}

}  // namespace simt::driver

namespace {

int g_context_token;

}  // namespace

// ---------------------------------------------------------------------------------------------
// The calling thread's counts (see `Count`): the first min(n, its size) into `out`; returns the
// number of counts there are. Not a CUDA call: tests find it with dlsym.
// ---------------------------------------------------------------------------------------------

API const char* arbor_simt_last_report() { return last_report.c_str(); }

API int arbor_simt_counters(unsigned long long* out, int n) {
    for (int i = 0; i < n && i < C_N; ++i) out[i] = counts[i];
    return C_N;
}

// ---------------------------------------------------------------------------------------------
// Initialisation, devices, contexts
// ---------------------------------------------------------------------------------------------

API CUresult cuInit(unsigned int) { return OK; }
API CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return OK;
}
API CUresult cuDeviceGetCount(int* n) {
    *n = env_int("ARBOR_SIMT_DEVICES", 1);
    return OK;
}
API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal < 0 || ordinal >= env_int("ARBOR_SIMT_DEVICES", 1)) return 101;  // CUDA_ERROR_INVALID_DEVICE
    *d = ordinal;
    return OK;
}
API CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "arbor SIMT host emulator (sm_%d)", cc());
    return OK;
}
API CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice d) {
    memset(uuid, 0, 16);
    uuid[0] = (unsigned char)d;
    return OK;
}
API CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }
API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = TOTAL_MEM;
    return OK;
}
API CUresult cuDeviceGetAttribute(int* v, int attrib, CUdevice) {
    switch (attrib) {
        case 1: *v = 1024; break;                     // max threads per block
        case 2: *v = 1024; break;                     // max block dim x
        case 3: *v = 1024; break;                     // y
        case 4: *v = 64; break;                       // z
        case 5: *v = 2147483647; break;               // max grid x
        case 6: case 7: *v = 65535; break;            // y, z
        case 8: *v = 48 * 1024; break;                // shared memory per block
        case 10: *v = 32; break;                      // warp size
        case 13: *v = 1980000; break;                 // clock kHz
        case 16: *v = 132; break;                     // multiprocessors
        case 36: *v = 2619000; break;                 // memory clock kHz
        case 37: *v = 5120; break;                    // bus width
        case 38: *v = 50 * 1024 * 1024; break;        // L2
        case 75: *v = cc() / 10; break;               // compute capability
        case 76: *v = cc() % 10; break;
        case 81: *v = smem_optin() + 1024; break;     // shared memory per multiprocessor
        case 97: *v = smem_optin(); break;            // opt-in shared memory per block
        case 115: *v = 1; break;                      // memory pools
        default: *v = 0; break;
    }
    return OK;
}
API CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    *ctx = &g_context_token;
    return OK;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return OK; }
API CUresult cuDevicePrimaryCtxReset_v2(CUdevice) { return OK; }
static thread_local void* t_ctx = nullptr;
API CUresult cuCtxSetCurrent(void* ctx) {
    t_ctx = ctx;
    return OK;
}
API CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = t_ctx;
    return OK;
}
API CUresult cuCtxPushCurrent_v2(void* ctx) { return cuCtxSetCurrent(ctx); }
API CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = t_ctx;
    return OK;
}
API CUresult cuCtxGetDevice(CUdevice* d) {
    *d = 0;
    return OK;
}
API CUresult cuCtxSynchronize() { return synchronize("cuCtxSynchronize"); }
API CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = 0;
    return OK;
}
API CUresult cuCtxSetLimit(int, size_t) { return OK; }
API CUresult cuCtxGetLimit(size_t* v, int) {
    *v = 0;
    return OK;
}
API CUresult cuCtxSetFlags(unsigned int) { return OK; }

static const char* error_name(CUresult r) {
    switch (r) {
        case OK: return "CUDA_SUCCESS";
        case E_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case E_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case E_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
        case E_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
        case E_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case E_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case E_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
        case E_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
        case E_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        default: return "CUDA_ERROR_UNKNOWN";
    }
}
API CUresult cuGetErrorName(CUresult r, const char** s) {
    *s = error_name(r);
    return OK;
}
API CUresult cuGetErrorString(CUresult r, const char** s) {
    *s = error_name(r);
    return OK;
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

static CUresult alloc_now(CUdeviceptr* p, size_t bytes);
API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (CUresult r = refused_while_capturing("cuMemAlloc")) return r;
    return alloc_now(p, bytes);
}
static CUresult alloc_now(CUdeviceptr* p, size_t bytes) {
    if (bytes == 0) return E_INVALID_VALUE;
    if (allocated + pool_unused_total + bytes > TOTAL_MEM) return E_OUT_OF_MEMORY;
    void* m = device_alloc(bytes);
    if (!m) return E_OUT_OF_MEMORY;
    *p = reinterpret_cast<CUdeviceptr>(m);
    return OK;
}
API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) {
    if (bytes == 0) return E_INVALID_VALUE;
    size_t grow = 0;
    {
        std::lock_guard<std::mutex> g(mem_lock);
        if (pool_unused >= bytes) {
            pool_unused -= bytes;
            pool_unused_total -= bytes;
        } else {
            if (allocated + pool_unused_total + bytes > TOTAL_MEM) return E_OUT_OF_MEMORY;
            grow = bytes;
        }
    }
    void* m = device_alloc(bytes);
    if (!m) return E_OUT_OF_MEMORY;
    std::lock_guard<std::mutex> g(mem_lock);
    allocs[reinterpret_cast<uintptr_t>(m)].pooled = true;
    pool_used += bytes;
    pool_used_high = std::max(pool_used_high, pool_used);
    pool_reserved_high = std::max(pool_reserved_high, pool_used + pool_unused);
    if (grow) {
        counts[C_POOL_GROWS] += 1;
        counts[C_POOL_GROW_BYTES] += grow;
    }
    *p = reinterpret_cast<CUdeviceptr>(m);
    return OK;
}
API CUresult cuMemFree_v2(CUdeviceptr p) {
    if (p == 0) return OK;
    if (!device_free((uintptr_t)p)) {
        report(range_error("a free (not an allocation's start)", (uintptr_t)p, 0));
        return E_INVALID_VALUE;
    }
    return OK;
}
API CUresult cuMemFreeAsync(CUdeviceptr p, void* s) {
    {
        std::lock_guard<std::mutex> g(stream_lock);
        if (stream_of(s)->capture) return OK;  // a graph's free node: the memory stays (a small leak)
    }
    return cuMemFree_v2(p);
}
API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(mem_lock);
    *free_bytes = TOTAL_MEM - allocated - pool_unused_total;
    *total = TOTAL_MEM;
    return OK;
}
// The device's one pool (its handle: any non-null token).
int g_pool_token;
API CUresult cuDeviceGetMemPool(void** pool, CUdevice) {
    *pool = &g_pool_token;
    return OK;
}
API CUresult cuDeviceGetDefaultMemPool(void** pool, CUdevice d) { return cuDeviceGetMemPool(pool, d); }
// CUmemPool_attribute: release threshold (4), reserved now / high (5, 6), used now / high (7, 8);
// the counts are the calling thread's. The two high marks are reset by setting them to 0.
API CUresult cuMemPoolSetAttribute(void* pool, int attr, void* value) {
    if (pool != &g_pool_token || !value) return E_INVALID_VALUE;
    const unsigned long long v = *static_cast<unsigned long long*>(value);
    std::lock_guard<std::mutex> g(mem_lock);
    switch (attr) {
        case 4: pool_threshold = v; return OK;
        case 6: if (v) return E_INVALID_VALUE; pool_reserved_high = pool_used + pool_unused; return OK;
        case 8: if (v) return E_INVALID_VALUE; pool_used_high = pool_used; return OK;
        default: return E_INVALID_VALUE;
    }
}
API CUresult cuMemPoolGetAttribute(void* pool, int attr, void* value) {
    if (pool != &g_pool_token || !value) return E_INVALID_VALUE;
    unsigned long long& v = *static_cast<unsigned long long*>(value);
    std::lock_guard<std::mutex> g(mem_lock);
    switch (attr) {
        case 4: v = pool_threshold; return OK;
        case 5: v = pool_used + pool_unused; return OK;
        case 6: v = pool_reserved_high; return OK;
        case 7: v = pool_used; return OK;
        case 8: v = pool_used_high; return OK;
        default: return E_INVALID_VALUE;
    }
}
API CUresult cuMemPoolTrimTo(void* pool, size_t keep) {
    if (pool != &g_pool_token) return E_INVALID_VALUE;
    pool_trim(keep);
    return OK;
}
API CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned int) {
    *p = aligned_alloc(256, (bytes + 255) & ~size_t(255));
    return *p ? OK : E_OUT_OF_MEMORY;
}
API CUresult cuMemFreeHost(void* p) {
    free(p);
    return OK;
}
API CUresult cuMemHostRegister_v2(void*, size_t, unsigned int) { return OK; }
API CUresult cuMemHostUnregister(void*) { return OK; }

static CUresult copy(void* dst, const void* src, size_t n, bool dst_dev, bool src_dev, void* s) {
    return enqueue(s, [=]() -> std::string {
        if (dst_dev && !inside((uintptr_t)dst, n)) return range_error("a copy's destination", (uintptr_t)dst, n);
        if (src_dev && !inside((uintptr_t)src, n)) return range_error("a copy's source", (uintptr_t)src, n);
        const int kind = dst_dev ? (src_dev ? C_DTOD : C_HTOD) : C_DTOH;
        counts[kind] += 1;
        counts[kind + 1] += n;
        memmove(dst, src, n);
        return "";
    });
}
API CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) {
    if (CUresult r = refused_while_capturing("cuMemcpyHtoD")) return r;
    return copy((void*)d, h, n, true, false, nullptr);
}
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void* s) {
    return copy((void*)d, h, n, true, false, s);
}
API CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) {
    if (CUresult r = refused_while_capturing("cuMemcpyDtoH")) return r;
    return copy(h, (const void*)d, n, false, true, nullptr);
}
API CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void* s) {
    return copy(h, (const void*)d, n, false, true, s);
}
API CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr src, size_t n) {
    if (CUresult r = refused_while_capturing("cuMemcpyDtoD")) return r;
    return copy((void*)d, (const void*)src, n, true, true, nullptr);
}
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr src, size_t n, void* s) {
    return copy((void*)d, (const void*)src, n, true, true, s);
}
API CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void* s) {
    return enqueue(s, [=]() -> std::string {
        if (!inside((uintptr_t)d, n)) return range_error("a fill", (uintptr_t)d, n);
        counts[C_FILLS] += 1;
        memset((void*)d, v, n);
        return "";
    });
}
API CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return cuMemsetD8Async(d, v, n, nullptr); }
API CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, void* s) {
    return enqueue(s, [=]() -> std::string {
        if (!inside((uintptr_t)d, n * 4)) return range_error("a fill", (uintptr_t)d, n * 4);
        counts[C_FILLS] += 1;
        unsigned int* p = (unsigned int*)d;
        for (size_t i = 0; i < n; ++i) p[i] = v;
        return "";
    });
}

// ---------------------------------------------------------------------------------------------
// Streams and events
// ---------------------------------------------------------------------------------------------

API CUresult cuStreamCreate(void** s, unsigned int) {
    *s = new Stream();
    return OK;
}
API CUresult cuStreamCreateWithPriority(void** s, unsigned int f, int) { return cuStreamCreate(s, f); }
API CUresult cuStreamDestroy_v2(void* s) {
    if (reinterpret_cast<uintptr_t>(s) > 2) delete static_cast<Stream*>(s);
    return OK;
}
API CUresult cuStreamSynchronize(void*) { return synchronize("cuStreamSynchronize"); }
API CUresult cuStreamQuery(void*) { return OK; }
API CUresult cuStreamWaitEvent(void*, void*, unsigned int) { return OK; }
API CUresult cuStreamBeginCapture_v2(void* s, int mode) {
    std::lock_guard<std::mutex> g(stream_lock);
    Stream* st = stream_of(s);
    if (st->capture) return E_INVALID_VALUE;
    st->capture = new Graph();
    st->capture_mode = mode;
    capturing(mode) += 1;
    return OK;
}
API CUresult cuStreamEndCapture(void* s, void** graph) {
    std::lock_guard<std::mutex> g(stream_lock);
    Stream* st = stream_of(s);
    if (!st->capture) return E_INVALID_VALUE;
    *graph = st->capture;
    st->capture = nullptr;
    capturing(st->capture_mode) -= 1;
    return OK;
}
API CUresult cuStreamIsCapturing(void* s, int* status) {
    std::lock_guard<std::mutex> g(stream_lock);
    *status = stream_of(s)->capture ? 1 : 0;
    return OK;
}
API CUresult cuLaunchHostFunc(void* s, void (*fn)(void*), void* user) {
    return enqueue(s, [=]() -> std::string {
        fn(user);
        return "";
    });
}

API CUresult cuEventCreate(void** e, unsigned int) {
    *e = new Event();
    return OK;
}
API CUresult cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return OK;
}
API CUresult cuEventRecord(void* e, void* s) {
    Event* ev = static_cast<Event*>(e);
    return enqueue(s, [ev]() -> std::string {
        ev->at = std::chrono::steady_clock::now();
        ev->recorded = true;
        return "";
    });
}
API CUresult cuEventRecordWithFlags(void* e, void* s, unsigned int) { return cuEventRecord(e, s); }
API CUresult cuEventSynchronize(void*) { return synchronize("cuEventSynchronize"); }
API CUresult cuEventQuery(void*) { return OK; }
API CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    Event* s = static_cast<Event*>(a);
    Event* e = static_cast<Event*>(b);
    if (!s->recorded || !e->recorded) return E_INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(e->at - s->at).count();
    return OK;
}
API CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

// ---------------------------------------------------------------------------------------------
// Graphs
// ---------------------------------------------------------------------------------------------

API CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    *exec = new Graph(*static_cast<Graph*>(graph));
    return OK;
}
API CUresult cuGraphLaunch(void* exec, void* s) {
    Graph* g = static_cast<Graph*>(exec);
    counts[C_GRAPH_LAUNCHES] += 1;
    for (const Op& op : g->ops) {
        CUresult r = enqueue(s, op);
        if (r != OK) return r;
    }
    return OK;
}
API CUresult cuGraphUpload(void*, void*) { return OK; }
API CUresult cuGraphDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return OK;
}
API CUresult cuGraphExecDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return OK;
}
