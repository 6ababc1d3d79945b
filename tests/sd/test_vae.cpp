#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include "dedpo/safetensors.hpp"
#include "dedpo/sd/vae.hpp"
#include "golden.hpp"

namespace {

using namespace dedpo::sd;

TEST(AutoencoderKL, MatchesDiffusers) {
  DEDPO_GOLDEN_CASE(dir, "vae_kl");
  AutoencoderKL vae(AutoencoderKLConfig::from_file(dir / "config.json"));
  dedpo::safetensors::load_into(*vae, dir / "weights.safetensors");
  vae->eval();
  vae->to(dedpo::test::test_device());
  auto in = dedpo::test::load_on_device(dir / "inputs.safetensors");
  auto out = dedpo::safetensors::load(dir / "outputs.safetensors");
  at::NoGradGuard no_grad;
  auto posterior = vae->encode(in.at("image"));
  EXPECT_TENSOR_NEAR("moments", posterior.moments, out.at("moments"));
  EXPECT_TENSOR_NEAR("latent_mean", posterior.mean, out.at("latent_mean"));
  EXPECT_TENSOR_NEAR("latent_logvar", posterior.logvar, out.at("latent_logvar"));
  EXPECT_TENSOR_NEAR("latent_std", posterior.std, out.at("latent_std"));
  EXPECT_TENSOR_NEAR("reconstruction", vae->decode(posterior.mean), out.at("reconstruction"));
  std::map<std::string, at::Tensor> trace;
  const at::Tensor decoded = vae->decode(in.at("latents"), &trace);
  // Intermediates first: they localise a mismatch.
  for (const auto& [key, expected] : out) {
    if (key.rfind("intermediate.", 0) != 0) continue;
    const std::string name = key.substr(13);
    ASSERT_TRUE(trace.count(name)) << "no intermediate " << name;
    EXPECT_TENSOR_NEAR(key, trace.at(name), expected);
  }
  EXPECT_TENSOR_NEAR("decoded", decoded, out.at("decoded"));
}

}  // namespace
