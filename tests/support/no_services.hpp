#pragma once
// ExperimentServices for plugin tests whose plugin must not use them: every call fails.
#include <string>

#include "dedpo/services.hpp"

namespace dedpo::test {

class NoServices : public ExperimentServices {
 public:
  std::shared_ptr<Backbone> fresh_backbone() override { throw Error("services: not used"); }
  std::shared_ptr<Loss> make_loss(const std::string&, const Options&) override {
    throw Error("services: not used");
  }
  const Options& experiment_loss_options() const override { throw Error("services: not used"); }
  void train(Backbone&, Loss&, const PairDataset&, const at::Tensor&, const at::Tensor&,
             std::int64_t, std::uint64_t) override {
    throw Error("services: not used");
  }
};

}  // namespace dedpo::test
