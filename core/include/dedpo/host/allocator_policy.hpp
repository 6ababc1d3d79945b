#pragma once
// Host side, not part of the plugin SDK. How the process's heap treats large buffers.
//
// glibc serves every block over its mmap threshold (at most 32 MiB) with a fresh mmap and hands
// it back with munmap, so a training step that frees and re-allocates its activations faults in
// and zeroes them again on every step. dedpo's processes (the CLI, the runs the grid starts, the
// benches) therefore keep freed memory in the heap for reuse: no mmap for large blocks, no trimming
// of the heap's top (docs/performance.md has the measurements). DEDPO_ALLOCATOR=system keeps
// glibc's defaults; glibc's own MALLOC_* variables or GLIBC_TUNABLES, when set, are respected.
#include <string>

namespace dedpo {

enum class AllocatorPolicy {
  keep_buffers,      // dedpo's default: freed blocks stay in the heap for the next step
  system_default,    // DEDPO_ALLOCATOR=system: glibc as configured at start
  user_environment,  // the user set MALLOC_* or GLIBC_TUNABLES: theirs, untouched
};

// Reads DEDPO_ALLOCATOR ("keep", the default, or "system"; anything else throws dedpo::Error naming
// the variable) and applies the policy to this process. Call first thing in main(): blocks
// allocated before keep their mapping.
AllocatorPolicy apply_allocator_policy();

// The policy this process runs under, for the run log and results.json.
AllocatorPolicy current_allocator_policy();
std::string describe(AllocatorPolicy policy);

}  // namespace dedpo
