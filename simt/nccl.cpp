// arbor SIMT host emulator: NCCL (libnccl.so's calls) between the processes of one machine.
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>

#include "driver.h"

using namespace simt::driver;

// ---------------------------------------------------------------------------------------------
// NCCL: the communicator calls arbor makes (unique id, init, all-reduce, broadcast), between the
// processes of one machine through a shared-memory segment named by the unique id. Sums run in
// rank order, so every rank gets the same bits. A peer that does not arrive within ten minutes
// fails the call (ncclSystemError) instead of a hang.
// ---------------------------------------------------------------------------------------------

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
