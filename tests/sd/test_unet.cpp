#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <torch/csrc/autograd/function.h>

#include <algorithm>
#include <unordered_set>

#include "dedpo/error.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/sd/unet.hpp"
#include "golden.hpp"

namespace {

using namespace dedpo::sd;

void check_unet(const std::filesystem::path& dir) {
  UNet2DConditionModel unet(UNet2DConditionConfig::from_file(dir / "config.json"));
  dedpo::safetensors::load_into(*unet, dir / "weights.safetensors");
  unet->eval();
  unet->to(dedpo::test::test_device());
  auto in = dedpo::test::load_on_device(dir / "inputs.safetensors");
  auto out = dedpo::safetensors::load(dir / "outputs.safetensors");
  std::optional<UNetAddedCond> added;
  if (in.count("text_embeds")) added = UNetAddedCond{in.at("text_embeds"), in.at("time_ids")};
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> trace;
  const at::Tensor sample = unet->forward(in.at("sample"), in.at("timestep"), in.at("encoder_hidden_states"), added, &trace);
  for (const auto& [key, expected] : out) {
    if (key.rfind("intermediate.", 0) != 0) continue;
    const std::string name = key.substr(13);
    ASSERT_TRUE(trace.count(name)) << "no intermediate " << name;
    EXPECT_TENSOR_NEAR(key, trace.at(name), expected);
  }
  EXPECT_TENSOR_NEAR("sample", sample, out.at("sample"));
  if (out.count("sample_t500")) {
    const at::Tensor t500 = at::scalar_tensor(500, at::TensorOptions().dtype(at::kLong).device(dedpo::test::test_device()));
    EXPECT_TENSOR_NEAR("sample_t500", unet->forward(in.at("sample"), t500, in.at("encoder_hidden_states"), added),
                       out.at("sample_t500"));
  }
}

std::string config_error(const std::string& json) {
  try {
    UNet2DConditionConfig::from_json(json, "'config.json'");
  } catch (const dedpo::Error& e) {
    return e.what();
  }
  return "<no dedpo::Error>";
}

// Found by fuzz/model_config.cpp: an empty block list read block_out_channels[0] past the end; a
// huge first block overflowed 4 x channels; a float beyond int64_t was cast (undefined behaviour).
TEST(UNet2DConditionConfig, RefusesSizesItCannotHold) {
  EXPECT_EQ(config_error(R"({"block_out_channels": [], "down_block_types": [], "up_block_types": []})"),
            "config 'config.json': 'block_out_channels' is empty");
  EXPECT_EQ(config_error(R"({"block_out_channels": [4611686018427387904], "down_block_types": ["DownBlock2D"],
                             "up_block_types": ["UpBlock2D"], "attention_head_dim": 1})"),
            "config 'config.json': 'block_out_channels' is too large");
  EXPECT_EQ(config_error(R"({"block_out_channels": [0, 8], "down_block_types": ["DownBlock2D", "DownBlock2D"],
                             "up_block_types": ["UpBlock2D", "UpBlock2D"]})"),
            "config 'config.json': 'block_out_channels' must be positive sizes");
  EXPECT_EQ(config_error(R"({"in_channels": 1e300})"), "config 'config.json': 'in_channels' has the wrong type (1e+300)");
  EXPECT_EQ(config_error(R"({"block_out_channels": [32, 2.5]})"),
            "config 'config.json': 'block_out_channels' has the wrong type ([32,2.5])");
  EXPECT_EQ(config_error(R"({"layers_per_block": 18446744073709551615})"),
            "config 'config.json': 'layers_per_block' has the wrong type (18446744073709551615)");
  // A float without a fraction is still an integer, as Python's configs sometimes write them.
  EXPECT_EQ(UNet2DConditionConfig::from_json(R"({"in_channels": 8.0})").in_channels, 8);
}

TEST(UNet2DCondition, MatchesDiffusersSd15) {
  DEDPO_GOLDEN_CASE(dir, "unet_sd15");
  check_unet(dir);
}

TEST(UNet2DCondition, MatchesDiffusersSdxl) {
  DEDPO_GOLDEN_CASE(dir, "unet_sdxl");
  check_unet(dir);
}

TEST(UNet2DCondition, NonMultipleSizeForwardsUpsampleSize) {
  DEDPO_GOLDEN_CASE(dir, "unet_sd15");
  UNet2DConditionModel unet(UNet2DConditionConfig::from_file(dir / "config.json"));
  at::NoGradGuard no_grad;
  const auto& c = unet->config();
  const at::Tensor x = at::randn({1, c.in_channels, 12, 10});
  const at::Tensor ctx = at::randn({1, 7, c.cross_attention_dim[0]});
  EXPECT_EQ(unet->forward(x, at::scalar_tensor(3, at::kLong), ctx).sizes(), x.sizes());
}

struct UNetGradients {
  at::Tensor sample;                                // d loss / d sample
  std::map<std::string, at::Tensor> parameters;     // by parameter name
  std::size_t graph_nodes = 0;                      // operation nodes reachable from the output
};

std::size_t count_graph_nodes(const at::Tensor& output) {
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack{output.grad_fn().get()};
  while (!stack.empty()) {
    torch::autograd::Node* node = stack.back();
    stack.pop_back();
    if (!node || !seen.insert(node).second) continue;
    for (const auto& edge : node->next_edges()) stack.push_back(edge.function.get());
  }
  // The parameters' gradient accumulators are the same in both graphs: only operations count.
  return static_cast<std::size_t>(std::count_if(seen.begin(), seen.end(), [](const torch::autograd::Node* node) {
    return node->name() != "torch::autograd::AccumulateGrad";
  }));
}

// Gradients of a fixed random projection of the UNet output w.r.t. the sample and every parameter.
UNetGradients unet_gradients(const std::filesystem::path& dir, bool gradient_checkpointing) {
  UNet2DConditionModel unet(UNet2DConditionConfig::from_file(dir / "config.json"));
  dedpo::safetensors::load_into(*unet, dir / "weights.safetensors");
  unet->set_gradient_checkpointing(gradient_checkpointing);
  auto in = dedpo::safetensors::load(dir / "inputs.safetensors");
  std::optional<UNetAddedCond> added;
  if (in.count("text_embeds")) added = UNetAddedCond{in.at("text_embeds"), in.at("time_ids")};
  UNetGradients grads;
  const at::Tensor sample = in.at("sample").clone().requires_grad_(true);
  const at::Tensor out = unet->forward(sample, in.at("timestep"), in.at("encoder_hidden_states"), added);
  grads.graph_nodes = count_graph_nodes(out);
  at::manual_seed(7);
  (out * at::randn(out.sizes())).sum().backward();
  grads.sample = sample.grad();
  for (const auto& item : unet->named_parameters()) grads.parameters[item.key()] = item.value().grad();
  return grads;
}

void check_checkpointing_is_exact(const std::filesystem::path& dir) {
  const UNetGradients plain = unet_gradients(dir, false);
  const UNetGradients checkpointed = unet_gradients(dir, true);
  // Only the block boundaries stay in the graph: the blocks' own nodes are recomputed in backward.
  EXPECT_LT(checkpointed.graph_nodes * 4, plain.graph_nodes);
  // Behind the last up block nothing is summed in a different order: bitwise equal there. Upstream,
  // the engine adds a tensor's gradient contributions (skip states, the time embedding) in another
  // association, so those differ by float32 rounding, relative to the gradient's scale.
  const auto config = UNet2DConditionConfig::from_file(dir / "config.json");
  const std::string last_block_prefix = "up_blocks." + std::to_string(config.up_block_types.size() - 1) + ".";
  double worst = 0;
  std::string worst_name;
  auto compare = [&](const std::string& name, const at::Tensor& got, const at::Tensor& expected, bool bitwise) {
    ASSERT_TRUE(got.defined()) << name << " received no gradient with checkpointing";
    ASSERT_TRUE(expected.defined()) << name;
    const double d = dedpo::test::max_abs_diff(got, expected) / std::max(1.0, expected.abs().max().item<double>());
    if (d > worst) worst = d, worst_name = name;
    EXPECT_LE(d, bitwise ? 0.0 : 1e-5) << name;
  };
  compare("sample", checkpointed.sample, plain.sample, false);
  ASSERT_EQ(checkpointed.parameters.size(), plain.parameters.size());
  for (const auto& [name, grad] : plain.parameters) {
    const bool behind_last_block = name.rfind(last_block_prefix, 0) == 0 || name.rfind("conv_out.", 0) == 0 ||
                                   name.rfind("conv_norm_out.", 0) == 0;
    compare(name, checkpointed.parameters.at(name), grad, behind_last_block);
  }
  std::cout << "[ parity   ] checkpointed gradients: max diff / scale " << worst << " (" << worst_name << ")\n";
}

TEST(UNet2DCondition, GradientCheckpointingGivesTheSameGradientsSd15) {
  DEDPO_GOLDEN_CASE(dir, "unet_sd15");
  check_checkpointing_is_exact(dir);
}

TEST(UNet2DCondition, GradientCheckpointingGivesTheSameGradientsSdxl) {
  DEDPO_GOLDEN_CASE(dir, "unet_sdxl");
  check_checkpointing_is_exact(dir);
}

}  // namespace
