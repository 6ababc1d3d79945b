// dedpo_bench_scorers [vit-l-14|vit-h-14|tiny] [--images N] [--threads T]
//
// Throughput of CLIP scoring with random weights in a real architecture: ViT-L/14 (the aesthetic
// predictor's image tower, CLIP score) or ViT-H/14 (PickScore, HPSv2). Measures 512×512 uint8
// images -> preprocessing -> image embeddings, and prompts -> text embeddings, in batches of 8.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <chrono>
#include <iostream>
#include <string>

#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/scorers/clip_scorer.hpp"
#include "dedpo/sd/clip_model.hpp"

namespace {

dedpo::sd::ClipModelConfig architecture(const std::string& name) {
  dedpo::sd::ClipModelConfig c;
  c.text.vocab_size = 49408;
  c.text.hidden_act = c.vision.hidden_act = "gelu";
  c.vision.image_size = 224;
  c.vision.patch_size = 14;
  if (name == "vit-l-14") {
    c.text.hidden_size = 768, c.text.intermediate_size = 3072, c.text.num_hidden_layers = 12, c.text.num_attention_heads = 12;
    c.vision.hidden_size = 1024, c.vision.intermediate_size = 4096, c.vision.num_hidden_layers = 24, c.vision.num_attention_heads = 16;
    c.projection_dim = 768;
  } else if (name == "vit-h-14") {
    c.text.hidden_size = 1024, c.text.intermediate_size = 4096, c.text.num_hidden_layers = 24, c.text.num_attention_heads = 16;
    c.vision.hidden_size = 1280, c.vision.intermediate_size = 5120, c.vision.num_hidden_layers = 32, c.vision.num_attention_heads = 16;
    c.projection_dim = 1024;
  } else if (name == "tiny") {
    c.text.hidden_size = c.vision.hidden_size = 32, c.text.intermediate_size = c.vision.intermediate_size = 64;
    c.text.num_hidden_layers = c.vision.num_hidden_layers = 2, c.text.num_attention_heads = c.vision.num_attention_heads = 4;
    c.vision.image_size = 32, c.vision.patch_size = 8, c.projection_dim = 16;
  } else {
    throw std::runtime_error("unknown architecture '" + name + "' (vit-l-14, vit-h-14, tiny)");
  }
  c.text.projection_dim = c.vision.projection_dim = c.projection_dim;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  dedpo::apply_allocator_policy();  // as the CLI does
  std::string name = "vit-l-14";
  int images = 16, threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--images" && i + 1 < argc) images = std::stoi(argv[++i]);
    else if (arg == "--threads" && i + 1 < argc) threads = std::stoi(argv[++i]);
    else name = arg;
  }
  if (threads > 0) at::set_num_threads(threads);
  const dedpo::sd::ClipModelConfig config = architecture(name);
  dedpo::sd::ClipModel model(config);
  model->eval();
  const auto processor = dedpo::scorers::ClipImageProcessorConfig::for_image_size(config.vision.image_size);
  at::NoGradGuard no_grad;
  const int batch = 8;
  std::vector<at::Tensor> list;
  for (int i = 0; i < batch; ++i) list.push_back(at::randint(0, 256, {512, 512, 3}, at::kByte));
  const at::Tensor ids = at::randint(0, 49000, {batch, 77}, at::kLong);
  using clock = std::chrono::steady_clock;
  auto seconds = [](clock::time_point start) { return std::chrono::duration<double>(clock::now() - start).count(); };

  model->image_features(dedpo::scorers::preprocess_images({list[0]}, processor));  // warm-up
  auto start = clock::now();
  double preprocessing = 0;
  for (int done = 0; done < images; done += batch) {
    const auto before = clock::now();
    const at::Tensor pixels = dedpo::scorers::preprocess_images(list, processor);
    preprocessing += seconds(before);
    model->image_features(pixels);
  }
  const double image_time = seconds(start);
  start = clock::now();
  for (int done = 0; done < images; done += batch) model->text_features(ids);
  const double text_time = seconds(start);
  const int rounded = (images + batch - 1) / batch * batch;
  std::cout << fmt::format("{} ({} threads): {:.2f} images/s ({:.1f}% preprocessing), {:.2f} prompts/s\n", name,
                           at::get_num_threads(), rounded / image_time, 100 * preprocessing / image_time,
                           rounded / text_time);
  return 0;
}
