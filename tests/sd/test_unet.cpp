#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dedpo/safetensors.hpp"
#include "dedpo/sd/unet.hpp"
#include "golden.hpp"

namespace {

using namespace dedpo::sd;

void check_unet(const std::filesystem::path& dir) {
  UNet2DConditionModel unet(UNet2DConditionConfig::from_file(dir / "config.json"));
  dedpo::safetensors::load_into(*unet, dir / "weights.safetensors");
  unet->eval();
  auto in = dedpo::safetensors::load(dir / "inputs.safetensors");
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
    const at::Tensor t500 = at::scalar_tensor(500, at::kLong);
    EXPECT_TENSOR_NEAR("sample_t500", unet->forward(in.at("sample"), t500, in.at("encoder_hidden_states"), added),
                       out.at("sample_t500"));
  }
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

}  // namespace
