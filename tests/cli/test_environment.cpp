// The program links the LibTorch it was configured with, a CUDA build, and the dynamic loader picks
// the CUDA runtime that LibTorch was built with (the wheel's own NVIDIA libraries, which come first
// in the run path), not another libcudart found on the system.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <torch/version.h>

#include "test_support.hpp"

namespace {

std::vector<std::string> lines_starting_with(const std::string& text, const std::string& prefix) {
  std::vector<std::string> found;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with(prefix)) found.push_back(line.substr(prefix.size()));
  }
  return found;
}

std::vector<std::filesystem::path> torch_runtime_dirs() {
  std::vector<std::filesystem::path> dirs;
  std::istringstream in(DEDPO_TORCH_RUNTIME_PATH);
  std::string dir;
  while (std::getline(in, dir, ':')) dirs.push_back(std::filesystem::weakly_canonical(dir));
  return dirs;
}

bool in_one_of(const std::filesystem::path& file, const std::vector<std::filesystem::path>& dirs) {
  const std::filesystem::path parent = std::filesystem::weakly_canonical(file).parent_path();
  for (const auto& dir : dirs) {
    if (parent == dir) return true;
  }
  return false;
}

}  // namespace

TEST(Environment, TheCudaBuildOfTheConfiguredLibTorchIsLoaded) {
  const auto result = dedpo::test::run_dedpo("env");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(lines_starting_with(result.output, "LibTorch: "), std::vector<std::string>{TORCH_VERSION});
  EXPECT_EQ(lines_starting_with(result.output, "CUDA build: "), std::vector<std::string>{"yes"}) << result.output;

  const auto dirs = torch_runtime_dirs();
  ASSERT_FALSE(dirs.empty());
  const auto loaded = lines_starting_with(result.output, "loaded: ");
  std::vector<std::string> torch_cuda, cudart;
  for (const std::string& path : loaded) {
    const std::string file = std::filesystem::path(path).filename().string();
    if (file.starts_with("libtorch_cuda.so")) torch_cuda.push_back(path);
    if (file.starts_with("libcudart.so")) cudart.push_back(path);
  }
  ASSERT_EQ(torch_cuda.size(), 1u) << result.output;
  EXPECT_EQ(std::filesystem::weakly_canonical(torch_cuda[0]).parent_path(), dirs.front()) << result.output;
  // One CUDA runtime, and where LibTorch ships its own (the wheel's nvidia/*/lib), that one.
  ASSERT_EQ(cudart.size(), 1u) << result.output;
  if (dirs.size() > 1) EXPECT_TRUE(in_one_of(cudart[0], dirs)) << cudart[0] << " is not one of LibTorch's own libraries";
}
