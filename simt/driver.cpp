// arbor SIMT host emulator: the CUDA driver API and cublasGemmEx, as far as arbor (through cudarc)
// uses them, over host memory. Built as one library that answers to both libcuda.so and
// libcublas.so (scripts/simt_build.py), so that tests/cuda runs every GPU test body on a machine
// without a GPU: kernels are the real cuda/*.cu sources compiled for the host (runtime.cpp).
//
// What it checks that a GPU would only show as a crash or garbage:
//   * allocations end at a guard page (a read or write past the end faults, and the fault names
//     the kernel and block); fresh allocations and shared memory are filled with NaN bytes;
//   * copies, fills and cuBLAS operands must lie inside one allocation;
//   * a launch needs its dynamic shared memory allowed (the function attribute, the device limit);
//   * barriers and warp collectives every thread of which cannot arrive fail the launch.
// Streams run in issue order, at once (a valid schedule of any correct program); a stream being
// captured records its operations into the graph, which replays them in order.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "runtime.h"
// the kernels' own bf16 conversions (round to nearest even, NaN kept): cuBLAS's bf16 output rounds so
#include "../cuda/common.cuh"

#define API extern "C" __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : int {
    OK = 0,
    E_INVALID_VALUE = 1,
    E_OUT_OF_MEMORY = 2,
    E_NO_DEVICE = 100,
    E_INVALID_IMAGE = 200,
    E_INVALID_HANDLE = 400,
    E_NOT_FOUND = 500,
    E_ILLEGAL_ADDRESS = 700,
    E_LAUNCH_FAILED = 719,
    E_NOT_SUPPORTED = 801,
};

namespace {

// ---------------------------------------------------------------------------------------------
// The device: an sm_90-like GPU unless ARBOR_SIMT_CC / ARBOR_SIMT_SMEM_OPTIN say otherwise.
// ---------------------------------------------------------------------------------------------

int env_int(const char* k, int dflt) {
    const char* v = getenv(k);
    return v && *v ? atoi(v) : dflt;
}

int cc() { return env_int("ARBOR_SIMT_CC", 90); }
int smem_optin() { return env_int("ARBOR_SIMT_SMEM_OPTIN", 227 * 1024); }
constexpr size_t TOTAL_MEM = 80ull << 30;

// The calling thread's last report (`arbor_simt_last_report`: the self-test checks that a misuse
// fails for the reason it provokes).
thread_local std::string last_report;

void report(const std::string& what) {
    fprintf(stderr, "simt: %s\n", what.c_str());
    last_report = what;
}

// What the calling thread made the device do (`arbor_simt_counters`, for tests of what crosses
// between host and device). An operation runs on the thread that issues it (or launches the
// graph that holds it), so a test thread's counts are its own while other tests run beside it.
enum Count : int {
    C_LAUNCHES,      // kernels run (a graph's count too)
    C_GEMMS,         // cublasGemmEx calls run
    C_HTOD,          // host-to-device copies, and their bytes
    C_HTOD_BYTES,
    C_DTOH,          // device-to-host copies, and their bytes
    C_DTOH_BYTES,
    C_DTOD,          // device-to-device copies, and their bytes
    C_DTOD_BYTES,
    C_SYNCS,         // the host waiting for the device: stream, context and event synchronisation
    C_GRAPH_LAUNCHES,
    C_FILLS,         // memset calls run
    C_N
};
thread_local unsigned long long counts[C_N];

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

struct Alloc {
    void* map;
    size_t map_len;
    size_t size;
};

std::mutex mem_lock;
std::map<uintptr_t, Alloc> allocs;  // by start address
size_t allocated = 0;

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
    allocs[reinterpret_cast<uintptr_t>(p)] = Alloc{m, span + PAGE, bytes};
    allocated += bytes;
    return p;
}

bool device_free(uintptr_t p) {
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = allocs.find(p);
    if (it == allocs.end()) return false;
    munmap(it->second.map, it->second.map_len);
    allocated -= it->second.size;
    allocs.erase(it);
    return true;
}

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

// ---------------------------------------------------------------------------------------------
// Streams, events, graphs
// ---------------------------------------------------------------------------------------------

using Op = std::function<std::string()>;

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

// ---------------------------------------------------------------------------------------------
// Modules and functions
// ---------------------------------------------------------------------------------------------

struct Function {
    const simt::Entry* entry;
    int static_smem = 0;           // the entry's `.shared` declarations in the PTX, in bytes
    int max_threads = 1024;        // its `.maxntid` (__launch_bounds__), or the device's 1024
    int max_dynamic_smem = 48 * 1024;  // the attribute: by default 48 KiB less the static bytes
    // A wgmma entry (its name says so) of PTX for another target than sm_90a: on a GPU its body is a trap
    // (cuda/mma.cuh AM_wgmma), which this emulator, running the host build of every kernel, would
    // otherwise not show: its launch fails.
    bool traps = false;
};

// From the PTX text of one entry (from its `.entry` to the next): the static shared bytes it
// declares and its `.maxntid` product.
void read_entry_limits(const std::string& body, Function& f) {
    size_t at = 0;
    while ((at = body.find(".shared", at)) != std::string::npos) {
        const size_t line_start = body.rfind('\n', at) + 1;
        const size_t line_end = body.find('\n', at);
        const std::string line = body.substr(line_start, line_end - line_start);
        at += 7;
        // a declaration: ".shared .align A .b8 NAME[SIZE];" (not ".extern", not an instruction)
        const size_t first = line.find_first_not_of(" \t");
        if (first == std::string::npos || line.compare(first, 7, ".shared") != 0) continue;
        const size_t open = line.find('['), close = line.find(']');
        if (open == std::string::npos || close == std::string::npos || close <= open + 1) continue;
        const int elems = atoi(line.c_str() + open + 1);
        int width = 1;
        if (line.find(".b16") != std::string::npos) width = 2;
        if (line.find(".b32") != std::string::npos || line.find(".f32") != std::string::npos) width = 4;
        if (line.find(".b64") != std::string::npos || line.find(".f64") != std::string::npos) width = 8;
        f.static_smem += elems * width;
    }
    const size_t m = body.find(".maxntid");
    if (m != std::string::npos) {
        int x = 1, y = 1, z = 1;
        if (sscanf(body.c_str() + m, ".maxntid %d, %d, %d", &x, &y, &z) >= 1) f.max_threads = x * y * z;
    }
    f.max_dynamic_smem = std::max(0, 48 * 1024 - f.static_smem);
}

struct Module {
    std::map<std::string, Function*> functions;
};

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
    if (allocated + bytes > TOTAL_MEM) return E_OUT_OF_MEMORY;
    void* m = device_alloc(bytes);
    if (!m) return E_OUT_OF_MEMORY;
    *p = reinterpret_cast<CUdeviceptr>(m);
    return OK;
}
API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return alloc_now(p, bytes); }
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
    *free_bytes = TOTAL_MEM - allocated;
    *total = TOTAL_MEM;
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

// ---------------------------------------------------------------------------------------------
// Modules, functions, launches
// ---------------------------------------------------------------------------------------------

API CUresult cuModuleLoadData(void** module, const void* image) {
    const std::string ptx(static_cast<const char*>(image));
    const bool sm90a = ptx.find(".target sm_90a") != std::string::npos;
    Module* m = new Module();
    size_t at = 0;
    while ((at = ptx.find(".entry ", at)) != std::string::npos) {
        at += 7;
        size_t end = at;
        while (end < ptx.size() && (isalnum((unsigned char)ptx[end]) || ptx[end] == '_')) ++end;
        const std::string name = ptx.substr(at, end - at);
        const simt::Entry* e = simt::find_entry(name);
        if (!e) {
            report("the PTX declares kernel " + name +
                   ", which the emulator was not built with (rebuild it: python3 scripts/simt_build.py)");
            delete m;
            return E_INVALID_IMAGE;
        }
        Function* f = new Function{e};
        f->traps = !sm90a && name.find("wgmma") != std::string::npos;
        const size_t next = ptx.find(".entry ", at);
        read_entry_limits(ptx.substr(at, next == std::string::npos ? std::string::npos : next - at), *f);
        m->functions[name] = f;
    }
    *module = m;
    return OK;
}
API CUresult cuModuleUnload(void* m) {
    Module* mod = static_cast<Module*>(m);
    for (auto& [_, f] : mod->functions) delete f;
    delete mod;
    return OK;
}
API CUresult cuModuleGetFunction(void** f, void* m, const char* name) {
    Module* mod = static_cast<Module*>(m);
    auto it = mod->functions.find(name);
    if (it == mod->functions.end()) return E_NOT_FOUND;
    *f = it->second;
    return OK;
}
API CUresult cuFuncSetAttribute(void* f, int attrib, int v) {
    if (attrib == 8) {  // max dynamic shared memory: with the static bytes, within the device's
        Function* fn = static_cast<Function*>(f);
        if (v < 0 || fn->static_smem + v > smem_optin()) {
            report("kernel " + fn->entry->name + ": " + std::to_string(v) + " bytes of dynamic shared memory with " +
                   std::to_string(fn->static_smem) + " static exceed the device's " + std::to_string(smem_optin()));
            return E_INVALID_VALUE;
        }
        fn->max_dynamic_smem = v;
    }
    return OK;
}
API CUresult cuFuncGetAttribute(int* v, int attrib, void* f) {
    switch (attrib) {
        case 0: *v = static_cast<Function*>(f)->max_threads; break;
        case 1: *v = static_cast<Function*>(f)->static_smem; break;
        case 8: *v = static_cast<Function*>(f)->max_dynamic_smem; break;
        default: *v = 0; break;
    }
    return OK;
}
API CUresult cuFuncSetCacheConfig(void*, int) { return OK; }

API CUresult cuLaunchKernel(void* fp, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                            unsigned int by, unsigned int bz, unsigned int smem, void* s, void** params,
                            void** extra) {
    Function* f = static_cast<Function*>(fp);
    const simt::Entry* e = f->entry;
    if (extra) {
        report("cuLaunchKernel with `extra` arguments is not emulated");
        return E_NOT_SUPPORTED;
    }
    if (f->traps) {
        report("kernel " + e->name + " comes from PTX for another target than sm_90a: on a GPU its wgmma body is a "
               "trap (load it from the module's Hopper variant)");
        return E_LAUNCH_FAILED;
    }
    if ((int)smem > f->max_dynamic_smem) {
        report("kernel " + e->name + " launched with " + std::to_string(smem) +
               " bytes of dynamic shared memory, above its attribute's " + std::to_string(f->max_dynamic_smem));
        return E_INVALID_VALUE;
    }
    if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535 || bx * by * bz > 1024 || bz > 64) {
        report("kernel " + e->name + " launched with an invalid grid or block shape");
        return E_INVALID_VALUE;
    }
    if ((int)(bx * by * bz) > f->max_threads) {
        report("kernel " + e->name + " launched with " + std::to_string(bx * by * bz) +
               " threads a block, above its __launch_bounds__ " + std::to_string(f->max_threads));
        return E_INVALID_VALUE;
    }
    // the arguments are copied now, as the driver does (a captured launch replays these values)
    auto args = std::make_shared<std::vector<std::vector<unsigned char>>>();
    for (size_t i = 0; i < e->sizes.size(); ++i) {
        const unsigned char* p = static_cast<const unsigned char*>(params[i]);
        args->emplace_back(p, p + e->sizes[i]);
    }
    const simt::Dim3 grid{gx, gy, gz}, block{bx, by, bz};
    return enqueue(s, [=]() -> std::string {
        std::vector<void*> ptrs;
        for (auto& a : *args) ptrs.push_back(a.data());
        counts[C_LAUNCHES] += 1;
        return simt::run(*e, grid, block, smem, ptrs.data());
    });
}

// ---------------------------------------------------------------------------------------------
// cuBLAS: cublasGemmEx with f32 accumulation
// ---------------------------------------------------------------------------------------------

namespace {
struct Blas {
    void* stream = nullptr;
};

float tf32(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    u += 0x1000u;
    return __uint_as_float(u & ~0x1fffu);
}
enum : int { R_32F = 0, R_16BF = 14 };
enum : int { B_OK = 0, B_INVALID_VALUE = 7, B_EXECUTION_FAILED = 13, B_NOT_SUPPORTED = 15 };
}  // namespace

API int cublasCreate_v2(void** h) {
    *h = new Blas();
    return B_OK;
}
API int cublasDestroy_v2(void* h) {
    delete static_cast<Blas*>(h);
    return B_OK;
}
API int cublasSetStream_v2(void* h, void* s) {
    static_cast<Blas*>(h)->stream = s;
    return B_OK;
}
API int cublasGetStream_v2(void* h, void** s) {
    *s = static_cast<Blas*>(h)->stream;
    return B_OK;
}
API int cublasSetWorkspace_v2(void*, void*, size_t) { return B_OK; }
API int cublasSetMathMode(void*, int) { return B_OK; }
API int cublasGetMathMode(void*, int* m) {
    *m = 0;
    return B_OK;
}
API int cublasSetPointerMode_v2(void*, int mode) { return mode == 0 ? B_OK : B_NOT_SUPPORTED; }
API int cublasGetPointerMode_v2(void*, int* mode) {
    *mode = 0;
    return B_OK;
}

// C (m x n, column major, ldc) = alpha op(A) op(B) + beta C, op(A) m x k, op(B) k x n.
API int cublasGemmEx(void* h, int transa, int transb, int m, int n, int k, const void* alpha, const void* A,
                     int atype, int lda, const void* B, int btype, int ldb, const void* beta, void* C, int ctype,
                     int ldc, int compute, int /*algo*/) {
    const bool ta = transa != 0, tb = transb != 0;
    if (m < 0 || n < 0 || k < 0) return B_INVALID_VALUE;
    if (lda < (ta ? std::max(1, k) : std::max(1, m)) || ldb < (tb ? std::max(1, n) : std::max(1, k)) ||
        ldc < std::max(1, m))
        return B_INVALID_VALUE;
    const bool f32 = atype == R_32F && btype == R_32F && ctype == R_32F;
    const bool bf = atype == R_16BF && btype == R_16BF && (ctype == R_16BF || ctype == R_32F);
    const bool tf = compute == 77;
    if (!(compute == 68 || tf) || !(f32 || bf) || (tf && !f32)) return B_NOT_SUPPORTED;
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    Blas* bl = static_cast<Blas*>(h);
    const int r = enqueue(bl->stream, [=]() -> std::string {
        counts[C_GEMMS] += 1;
        if (m == 0 || n == 0) return "";
        const size_t ea = atype == R_32F ? 4 : 2, ec = ctype == R_32F ? 4 : 2;
        const size_t a_cols = ta ? m : k, a_rows = ta ? k : m, b_cols = tb ? k : n, b_rows = tb ? n : k;
        if (k > 0 && !inside((uintptr_t)A, ((a_cols - 1) * lda + a_rows) * ea))
            return range_error("cublasGemmEx's A", (uintptr_t)A, ((a_cols - 1) * lda + a_rows) * ea);
        if (k > 0 && !inside((uintptr_t)B, ((b_cols - 1) * ldb + b_rows) * ea))
            return range_error("cublasGemmEx's B", (uintptr_t)B, ((b_cols - 1) * ldb + b_rows) * ea);
        if (!inside((uintptr_t)C, ((size_t)(n - 1) * ldc + m) * ec))
            return range_error("cublasGemmEx's C", (uintptr_t)C, ((size_t)(n - 1) * ldc + m) * ec);
        auto load = [&](const void* base, size_t idx) {
            float v = atype == R_32F ? static_cast<const float*>(base)[idx]
                                     : bf16_to_f32(static_cast<const unsigned short*>(base)[idx]);
            return tf ? tf32(v) : v;
        };
        std::vector<float> a((size_t)m * k), b((size_t)n * k);  // op(A) by rows, op(B) by columns
        for (int i = 0; i < m; ++i)
            for (int l = 0; l < k; ++l)
                a[(size_t)i * k + l] = load(A, ta ? (size_t)i * lda + l : (size_t)l * lda + i);
        for (int j = 0; j < n; ++j)
            for (int l = 0; l < k; ++l)
                b[(size_t)j * k + l] = load(B, tb ? (size_t)l * ldb + j : (size_t)j * ldb + l);
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                const float* ar = &a[(size_t)i * k];
                const float* bc = &b[(size_t)j * k];
                // eight running sums (the vector unit's width), then their sum
                float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                int l = 0;
                for (; l + 8 <= k; l += 8)
                    for (int u = 0; u < 8; ++u) part[u] += ar[l + u] * bc[l + u];
                float acc = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
                for (; l < k; ++l) acc += ar[l] * bc[l];
                const size_t at = (size_t)j * ldc + i;
                if (ctype == R_32F) {
                    float* c = static_cast<float*>(C);
                    c[at] = al * acc + (be == 0.0f ? 0.0f : be * c[at]);
                } else {
                    unsigned short* c = static_cast<unsigned short*>(C);
                    c[at] = f32_to_bf16(al * acc + (be == 0.0f ? 0.0f : be * bf16_to_f32(c[at])));
                }
            }
        return "";
    });
    return r == OK ? B_OK : B_EXECUTION_FAILED;
}

// ---------------------------------------------------------------------------------------------
// NCCL: the communicator calls arbor makes (unique id, init, all-reduce, broadcast), between the
// processes of one machine through a shared-memory segment named by the unique id. Sums run in
// rank order, so every rank gets the same bits. A peer that does not arrive within ten minutes
// fails the call (ncclSystemError) instead of a hang.
// ---------------------------------------------------------------------------------------------

#include <fcntl.h>
#include <sched.h>

#include <atomic>

namespace {
struct NcclId {
    char internal[128];
};

constexpr size_t NCCL_HEADER = 4096;
constexpr size_t NCCL_SLOT = 64ull << 20;  // each rank's staging bytes per round

struct NcclComm {
    int rank = 0, nranks = 1;
    char* base = nullptr;
    size_t len = 0;
    unsigned long long phase = 0;
    std::atomic<unsigned long long>* arrived() { return reinterpret_cast<std::atomic<unsigned long long>*>(base); }
    unsigned char* slot(int r) { return reinterpret_cast<unsigned char*>(base + NCCL_HEADER + (size_t)r * NCCL_SLOT); }
    // What each rank calls, written before a call's first barrier and compared after it: ranks
    // that disagree (a rank-divergent program) fail the call, where a real NCCL would hang or
    // return garbage. Room for 126 ranks after the barrier's counter.
    unsigned long long* call(int r) { return reinterpret_cast<unsigned long long*>(base + 64 + (size_t)r * 32); }
    bool checks() const { return 64 + (size_t)nranks * 32 <= NCCL_HEADER; }
    void declare(unsigned long long kind, unsigned long long count, unsigned long long dtype, unsigned long long arg) {
        if (!checks()) return;
        unsigned long long* c = call(rank);
        c[0] = kind, c[1] = count, c[2] = dtype, c[3] = arg;
    }
    // after the barrier: empty, or which ranks disagree
    std::string disagreement(const char* what) {
        if (!checks()) return "";
        for (int r = 1; r < nranks; ++r)
            if (memcmp(call(0), call(r), 32) != 0) {
                char m[256];
                snprintf(m, sizeof m, "%s: ranks 0 and %d disagree (count %llu vs %llu, type %llu vs %llu, op/root %llu vs %llu)",
                         what, r, call(0)[1], call(r)[1], call(0)[2], call(r)[2], call(0)[3], call(r)[3]);
                return m;
            }
        return "";
    }
    // every rank's arrival at this rank's next barrier
    bool barrier() {
        phase += 1;
        arrived()->fetch_add(1);
        const auto t0 = std::chrono::steady_clock::now();
        while (arrived()->load() < phase * (unsigned long long)nranks) {
            sched_yield();
            if (std::chrono::steady_clock::now() - t0 > std::chrono::minutes(10)) return false;
        }
        return true;
    }
};

enum : int { N_OK = 0, N_SYSTEM = 2, N_INVALID = 4 };

size_t nccl_size(int dtype) {
    switch (dtype) {
        case 0: case 1: return 1;                  // int8, uint8
        case 2: case 3: case 7: return 4;          // int32, uint32, float32
        case 4: case 5: case 8: return 8;          // int64, uint64, float64
        case 6: case 9: return 2;                  // float16, bfloat16
        default: return 0;
    }
}

template <class T>
void reduce_into(T* out, NcclComm& c, size_t first, size_t n, int op) {
    for (size_t i = 0; i < n; ++i) {
        T acc = reinterpret_cast<const T*>(c.slot(0))[first + i];
        for (int r = 1; r < c.nranks; ++r) {
            const T x = reinterpret_cast<const T*>(c.slot(r))[first + i];
            acc = op == 0 ? acc + x : op == 1 ? acc * x : op == 2 ? (x > acc ? x : acc) : (x < acc ? x : acc);
        }
        out[i] = op == 4 ? acc / (T)c.nranks : acc;
    }
}
}  // namespace

API int ncclGetVersion(int* v) {
    *v = 22000;
    return N_OK;
}
API const char* ncclGetErrorString(int r) { return r == N_OK ? "no error" : "arbor SIMT NCCL error"; }
API const char* ncclGetLastError(void*) { return ""; }
API int ncclGetUniqueId(NcclId* id) {
    memset(id, 0, sizeof *id);
    static std::atomic<unsigned> counter{0};
    const unsigned long long t = (unsigned long long)std::chrono::steady_clock::now().time_since_epoch().count();
    snprintf(id->internal, sizeof id->internal, "/arbor-simt-nccl-%d-%u-%llx", (int)getpid(), counter++, t);
    return N_OK;
}
API int ncclCommInitRank(void** comm, int nranks, NcclId id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks || strncmp(id.internal, "/arbor-simt-nccl-", 17) != 0)
        return N_INVALID;
    const int fd = shm_open(id.internal, O_CREAT | O_RDWR, 0600);
    if (fd < 0) return N_SYSTEM;
    auto* c = new NcclComm();
    c->rank = rank;
    c->nranks = nranks;
    c->len = NCCL_HEADER + (size_t)nranks * NCCL_SLOT;
    if (ftruncate(fd, (off_t)c->len) != 0) {
        close(fd);
        delete c;
        return N_SYSTEM;
    }
    void* m = mmap(nullptr, c->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        delete c;
        return N_SYSTEM;
    }
    c->base = static_cast<char*>(m);
    if (!c->barrier()) return N_SYSTEM;
    if (rank == 0) shm_unlink(id.internal);  // every rank has it mapped: the name can go
    *comm = c;
    return N_OK;
}
API int ncclCommDestroy(void* comm) {
    NcclComm* c = static_cast<NcclComm*>(comm);
    munmap(c->base, c->len);
    delete c;
    return N_OK;
}
API int ncclCommAbort(void* comm) { return ncclCommDestroy(comm); }
API int ncclCommFinalize(void*) { return N_OK; }
API int ncclCommCount(void* comm, int* n) {
    *n = static_cast<NcclComm*>(comm)->nranks;
    return N_OK;
}
API int ncclCommUserRank(void* comm, int* r) {
    *r = static_cast<NcclComm*>(comm)->rank;
    return N_OK;
}
API int ncclGroupStart() { return N_OK; }
API int ncclGroupEnd() { return N_OK; }

API int ncclAllReduce(const void* send, void* recv, size_t count, int dtype, int op, void* comm, void* stream) {
    NcclComm* c = static_cast<NcclComm*>(comm);
    const size_t es = nccl_size(dtype);
    if (es == 0 || dtype == 6 || dtype == 9 || op < 0 || op > 4) return N_INVALID;
    const int r = enqueue(stream, [=]() -> std::string {
        if (!inside((uintptr_t)send, count * es) || !inside((uintptr_t)recv, count * es))
            return range_error("an NCCL all-reduce buffer", (uintptr_t)send, count * es);
        const size_t per = NCCL_SLOT / es;
        for (size_t first = 0; first < count; first += per) {
            const size_t n = std::min(per, count - first);
            memcpy(c->slot(c->rank), static_cast<const unsigned char*>(send) + first * es, n * es);
            if (first == 0) c->declare(1, count, dtype, op);
            if (!c->barrier()) return "an NCCL all-reduce: a peer did not arrive";
            if (first == 0) {
                const std::string e = c->disagreement("an NCCL all-reduce");
                if (!e.empty()) return e;
            }
            unsigned char* out = static_cast<unsigned char*>(recv) + first * es;
            // every rank reads the slots from element 0 of this round
            switch (dtype) {
                case 7: reduce_into(reinterpret_cast<float*>(out), *c, 0, n, op); break;
                case 8: reduce_into(reinterpret_cast<double*>(out), *c, 0, n, op); break;
                case 2: reduce_into(reinterpret_cast<int*>(out), *c, 0, n, op); break;
                case 3: reduce_into(reinterpret_cast<unsigned*>(out), *c, 0, n, op); break;
                case 4: reduce_into(reinterpret_cast<long long*>(out), *c, 0, n, op); break;
                case 5: reduce_into(reinterpret_cast<unsigned long long*>(out), *c, 0, n, op); break;
                case 0: reduce_into(reinterpret_cast<signed char*>(out), *c, 0, n, op); break;
                case 1: reduce_into(reinterpret_cast<unsigned char*>(out), *c, 0, n, op); break;
            }
            if (!c->barrier()) return "an NCCL all-reduce: a peer did not arrive";
        }
        return "";
    });
    return r == OK ? N_OK : N_SYSTEM;
}

API int ncclBroadcast(const void* send, void* recv, size_t count, int dtype, int root, void* comm, void* stream) {
    NcclComm* c = static_cast<NcclComm*>(comm);
    const size_t es = nccl_size(dtype);
    if (es == 0 || root < 0 || root >= c->nranks) return N_INVALID;
    const int r = enqueue(stream, [=]() -> std::string {
        const size_t per = NCCL_SLOT / es;
        for (size_t first = 0; first < count; first += per) {
            const size_t n = std::min(per, count - first);
            if (c->rank == root) memcpy(c->slot(root), static_cast<const unsigned char*>(send) + first * es, n * es);
            if (first == 0) c->declare(2, count, dtype, root);
            if (!c->barrier()) return "an NCCL broadcast: a peer did not arrive";
            if (first == 0) {
                const std::string e = c->disagreement("an NCCL broadcast");
                if (!e.empty()) return e;
            }
            memcpy(static_cast<unsigned char*>(recv) + first * es, c->slot(root), n * es);
            if (!c->barrier()) return "an NCCL broadcast: a peer did not arrive";
        }
        return "";
    });
    return r == OK ? N_OK : N_SYSTEM;
}
