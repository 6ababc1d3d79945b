#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <string>

#include "dedpo/error.hpp"
#include "dedpo/host/allocator_policy.hpp"

namespace {

void clear_environment() {
  for (const char* name : {"DEDPO_ALLOCATOR", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                           "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"}) {
    unsetenv(name);
  }
}

// Bytes of blocks glibc mapped on their own (mallinfo2's hblkhd) while a 64 MiB block is held.
std::size_t mapped_while_holding_64_mib() {
  void* block = std::malloc(64 << 20);
  EXPECT_NE(block, nullptr);
  const std::size_t mapped = mallinfo2().hblkhd;
  std::free(block);
  return mapped;
}

}  // namespace

// One test, system first: glibc's settings belong to the process and cannot be undone.
TEST(AllocatorPolicy, SystemKeepsGlibcsMmapAndTheDefaultTakesLargeBlocksFromTheHeap) {
#ifdef DEDPO_ADDRESS_SANITIZER
  GTEST_SKIP() << "AddressSanitizer replaces malloc: glibc's mallopt settings, which this test observes, "
                  "do not apply (scripts/test.sh --sanitize); the Release suite runs it";
#endif
  clear_environment();
  setenv("DEDPO_ALLOCATOR", "system", 1);
  ASSERT_EQ(dedpo::apply_allocator_policy(), dedpo::AllocatorPolicy::system_default);
  EXPECT_NE(dedpo::describe(dedpo::current_allocator_policy()).find("system"), std::string::npos);
  EXPECT_GE(mapped_while_holding_64_mib(), std::size_t{64} << 20);

  unsetenv("DEDPO_ALLOCATOR");
  ASSERT_EQ(dedpo::apply_allocator_policy(), dedpo::AllocatorPolicy::keep_buffers);
  EXPECT_EQ(dedpo::current_allocator_policy(), dedpo::AllocatorPolicy::keep_buffers);
  EXPECT_LT(mapped_while_holding_64_mib(), std::size_t{64} << 20);
}

TEST(AllocatorPolicy, GlibcVariablesTheUserSetAreRespected) {
  clear_environment();
  setenv("MALLOC_TOP_PAD_", "4096", 1);
  EXPECT_EQ(dedpo::apply_allocator_policy(), dedpo::AllocatorPolicy::user_environment);
  clear_environment();
  setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0", 1);
  EXPECT_EQ(dedpo::apply_allocator_policy(), dedpo::AllocatorPolicy::user_environment);
  clear_environment();
}

TEST(AllocatorPolicy, AnUnknownValueIsAnErrorNamingTheVariable) {
  clear_environment();
  setenv("DEDPO_ALLOCATOR", "jemalloc", 1);
  try {
    dedpo::apply_allocator_policy();
    FAIL() << "DEDPO_ALLOCATOR=jemalloc was accepted";
  } catch (const dedpo::Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("DEDPO_ALLOCATOR='jemalloc'"), std::string::npos) << message;
    EXPECT_NE(message.find("\"system\""), std::string::npos) << message;
  }
  unsetenv("DEDPO_ALLOCATOR");
}
