#pragma once
// LoRA helpers of the Stable Diffusion backbone tests (tests/sd15, tests/sdxl).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cstdint>

#include "dedpo/backbone.hpp"
#include "dedpo/sd/diffusion_backbone.hpp"
#include "module_test_support.hpp"

namespace dedpo::test {

inline const std::vector<sd::LoraLayer>& lora_layers(Backbone& backbone) {
  return dynamic_cast<sd::DiffusionBackbone&>(backbone).lora_layers();
}

// lora_B drawn from N(0, 0.1²): adapters that change the prediction, unlike the zero start.
inline void randomize_lora_up(Backbone& backbone, std::uint64_t seed) {
  at::NoGradGuard no_grad;
  at::Generator generator = gen(seed);
  for (const sd::LoraLayer& layer : lora_layers(backbone)) layer.up.normal_(0, 0.1, generator);
}

// Every adapter of `loaded` equals that of `original`, bit for bit.
inline void expect_same_adapters(Backbone& loaded, Backbone& original) {
  const auto& expected = lora_layers(original);
  const auto& actual = lora_layers(loaded);
  ASSERT_EQ(actual.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_TRUE(at::equal(actual[i].down, expected[i].down)) << expected[i].path;
    EXPECT_TRUE(at::equal(actual[i].up, expected[i].up)) << expected[i].path;
  }
}

}  // namespace dedpo::test
