// arbor SIMT host emulator: the launch interface the fake driver's launches (module.cpp) call.
#pragma once
#include <string>
#include <vector>

#include "simt.h"

namespace simt {

struct Entry {
    std::string name;
    void* fn;
    Invoke invoke;
    std::vector<unsigned char> sizes;  // each parameter's size in bytes
};

// The registered kernel called `name`, or null.
const Entry* find_entry(const std::string& name);

// Run every block of a launch to completion, one block at a time (x fastest, then y, z). Returns
// an empty string, or what went wrong: a barrier or collective that cannot complete, threads of
// one barrier at different source lines, a collective with lanes missing. `params` are
// cuLaunchKernel's argument pointers.
std::string run(const Entry& e, Dim3 grid, Dim3 block, unsigned int smem_bytes, void** params);

}  // namespace simt
