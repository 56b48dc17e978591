// arbor SIMT host emulator: what the fake driver's files share: driver.cpp (devices, contexts,
// memory, streams, events, graphs), module.cpp (modules and launches), blas.cpp (cuBLAS) and
// nccl.cpp (NCCL). The result codes, reports and counts, the check that a range lies inside one
// allocation, and the stream queue every device operation goes through.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <functional>
#include <string>

#include "runtime.h"

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

namespace simt::driver {

// The opt-in shared memory of a block, in bytes (ARBOR_SIMT_SMEM_OPTIN; by default sm_90's).
int smem_optin();

// Print `what` and keep it as the calling thread's last report.
void report(const std::string& what);

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
    C_POOL_GROWS,    // stream-ordered allocations the pool's unused memory could not serve, and
    C_POOL_GROW_BYTES,  // their bytes (taken from the device: what a real driver maps anew)
    C_N
};
extern thread_local unsigned long long counts[C_N];

// Whether [p, p + n) lies inside one allocation.
bool inside(uintptr_t p, size_t n);

// The report of a range not inside one allocation.
std::string range_error(const char* what, uintptr_t p, size_t n);

// A device operation: it runs and returns an empty string, or what went wrong.
using Op = std::function<std::string()>;

// Run `op` on stream `s` now, or record it into the graph the stream is capturing.
CUresult enqueue(void* s, Op op);

}  // namespace simt::driver
