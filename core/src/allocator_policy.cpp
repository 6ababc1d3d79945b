#include "dedpo/host/allocator_policy.hpp"

#include <malloc.h>

#include <climits>
#include <cstdlib>
#include <string_view>

#include "dedpo/error.hpp"

namespace dedpo {

namespace {

constexpr const char* kVariable = "DEDPO_ALLOCATOR";

AllocatorPolicy g_policy = AllocatorPolicy::system_default;

// The environment variables glibc's allocator reads at start-up.
bool user_tuned_glibc() {
  for (const char* name : {"MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                           "MALLOC_ARENA_MAX"}) {
    if (std::getenv(name)) return true;
  }
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  return tunables && std::string_view(tunables).find("glibc.malloc.") != std::string_view::npos;
}

void keep_buffers() {
  // No mmap for large blocks: they come from the heap and return to it when freed.
  mallopt(M_MMAP_MAX, 0);
  // Shrink the heap's top only when more than 2 GiB (mallopt's largest value) lie free there: the
  // next step needs the same memory again.
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
  // Grow the heap by 1 GiB of address space at a time (resident only when touched): fewer brk calls.
  mallopt(M_TOP_PAD, 1 << 30);
}

}  // namespace

AllocatorPolicy apply_allocator_policy() {
  const char* value = std::getenv(kVariable);
  const std::string_view choice = value ? value : "keep";
  if (choice != "keep" && choice != "system") {
    throw Error(std::string(kVariable) + "='" + std::string(choice) +
                "': expected \"keep\" (keep freed buffers for reuse, the default) or \"system\" (glibc's defaults)");
  }
  if (user_tuned_glibc()) {
    g_policy = AllocatorPolicy::user_environment;
  } else if (choice == "system") {
    g_policy = AllocatorPolicy::system_default;
  } else {
    keep_buffers();
    g_policy = AllocatorPolicy::keep_buffers;
  }
  return g_policy;
}

AllocatorPolicy current_allocator_policy() { return g_policy; }

std::string describe(AllocatorPolicy policy) {
  switch (policy) {
    case AllocatorPolicy::keep_buffers:
      return "keep (freed buffers stay in the heap; DEDPO_ALLOCATOR=system turns it off)";
    case AllocatorPolicy::system_default:
      return "system (glibc's defaults)";
    case AllocatorPolicy::user_environment:
      return "user (glibc as set by MALLOC_* / GLIBC_TUNABLES)";
  }
  return "unknown";
}

}  // namespace dedpo
