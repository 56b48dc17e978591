// arbor SIMT host emulator: modules, their functions and kernel launches (cuModuleLoadData, the
// function attributes, cuLaunchKernel). A module's PTX is read for its entries' names and limits
// only (static shared memory, __launch_bounds__): each entry runs as the host build of the kernel
// of that name (runtime.cpp), on the launch's stream (driver.cpp).
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "driver.h"

using namespace simt::driver;

namespace {

// ---------------------------------------------------------------------------------------------
// Modules and functions
// ---------------------------------------------------------------------------------------------

struct Function {
    const simt::Entry* entry;
    int static_smem = 0;           // the entry's `.shared` declarations in the PTX, in bytes
    int max_threads = 1024;        // its `.maxntid` (__launch_bounds__), or the device's 1024
    int max_dynamic_smem = 48 * 1024;  // the attribute: by default 48 KiB less the static bytes
    // A wgmma entry (its name says so) of PTX for another target than sm_90a: on a GPU its body is a trap
    // (cuda/wgmma.cuh AM_wgmma), which this emulator, running the host build of every kernel, would
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

}  // namespace

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
