#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include "dedpo/autocast.hpp"
#include "dedpo/sd/checkpoint.hpp"

namespace {

using dedpo::sd::checkpoint;

struct Grads {
  at::Tensor input, weight, bias;
};

enum class Autocast { off, backward_inside, backward_outside };

// Gradients of a Linear + GELU applied to x, checkpointed or not, under bfloat16 CPU autocast with
// the backward inside the region (where autocast's weight-cast cache is live) or after it.
Grads linear_gelu_grads(bool checkpointed, Autocast autocast) {
  at::manual_seed(3);
  torch::nn::Linear linear(16, 8);
  const at::Tensor x = at::randn({4, 16}).requires_grad_(true);
  const dedpo::sd::CheckpointedFn fn = [&](const std::vector<at::Tensor>& in) {
    return std::vector<at::Tensor>{at::gelu(linear->forward(in[0]))};
  };
  at::Tensor loss;
  {
    dedpo::AutocastRegion region(c10::DeviceType::CPU, autocast != Autocast::off);
    const at::Tensor y = checkpointed ? checkpoint(fn, {x}, linear->parameters())[0] : fn({x})[0];
    loss = y.to(at::kFloat).pow(2).sum();
    if (autocast == Autocast::backward_inside) loss.backward();
  }
  if (autocast != Autocast::backward_inside) loss.backward();
  return {x.grad(), linear->weight.grad(), linear->bias.grad()};
}

void expect_same(const Grads& got, const Grads& expected) {
  ASSERT_TRUE(got.input.defined() && got.weight.defined() && got.bias.defined());
  EXPECT_TRUE(at::equal(got.input, expected.input));
  EXPECT_TRUE(at::equal(got.weight, expected.weight));
  EXPECT_TRUE(at::equal(got.bias, expected.bias));
}

TEST(Checkpoint, GivesTheGradientsOfThePlainForward) {
  expect_same(linear_gelu_grads(true, Autocast::off), linear_gelu_grads(false, Autocast::off));
}

TEST(Checkpoint, KeepsWeightGradientsWhenBackwardRunsUnderAutocast) {
  expect_same(linear_gelu_grads(true, Autocast::backward_inside), linear_gelu_grads(false, Autocast::backward_inside));
}

TEST(Checkpoint, RecomputesUnderTheAutocastOfItsForward) {
  expect_same(linear_gelu_grads(true, Autocast::backward_outside), linear_gelu_grads(false, Autocast::backward_outside));
}

}  // namespace
