// An annotator of known accuracy: it reports the hidden human label, flipped with probability
// 1 - accuracy, with the confidence it claims. It isolates the effect of annotator accuracy from
// any particular model's bias. Pairs without a human label get 0.5.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <dedpo/annotator.hpp>

namespace {

const dedpo::OptionSpec kOptions[] = {
    {"accuracy", dedpo::OptionType::real, "0.7", "Probability that the reported label is right."},
    {"confidence", dedpo::OptionType::real, "0.8",
     "Probability the annotator reports for its chosen side, in [0.5, 1]."},
};

class NoisyOracle : public dedpo::Annotator {
 public:
  explicit NoisyOracle(const dedpo::Options& options)
      : accuracy_(options.real("accuracy")), confidence_(options.real("confidence")) {
    if (accuracy_ < 0.0 || accuracy_ > 1.0) options.fail("accuracy", "expected a number in [0, 1]");
    if (confidence_ < 0.5 || confidence_ > 1.0) {
      options.fail("confidence", "expected a number in [0.5, 1]");
    }
  }

  at::Tensor annotate(dedpo::AnnotatorContext& context) override {
    const at::Tensor& z = context.data.human_label;  // [N], NaN where no human label exists
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(context.seed);
    at::Tensor flip = at::rand(z.sizes(), generator, at::kFloat) >= accuracy_;
    at::Tensor chosen_a = (z > 0.5).logical_xor(flip);  // [N] bool: reported winner is A
    at::Tensor probability = at::where(chosen_a, at::full_like(z, confidence_),
                                       at::full_like(z, 1.0 - confidence_));
    // Ties and unlabelled pairs: no information.
    return at::where(z.isnan() | (z == 0.5), at::full_like(z, 0.5), probability);
  }

 private:
  double accuracy_;
  double confidence_;
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<NoisyOracle>(
    "noisy_oracle", "1.0.0", "The human label flipped with a known rate (annotator-accuracy studies).",
    kOptions))
