#pragma once
// Exponential moving average of the trainable parameters ([train] ema_decay; 0 = none). The
// averages are what evaluation sees and what the run saves.
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/serialize/archive.h>

namespace dedpo {

class Ema {
 public:
  Ema(std::vector<at::Tensor> params, double decay);

  void update();  // after each optimiser step

  // Runs f() with the averages in the parameters, then puts the trained values back.
  template <class F>
  auto with_averages(F&& f) {
    if (averages_.empty()) return f();
    Swap swap(*this);
    return f();
  }
  void copy_averages_into_params();  // for good: the final weights

  // Its part of a checkpoint: "ema_count" and "ema<i>".
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);
  // Copies the averages a checkpoint holds (none when the run kept no EMA) into `params`, the
  // trainable parameters in model() order; `file` names the checkpoint in errors.
  static void restore_averages(torch::serialize::InputArchive& archive,
                               const std::vector<at::Tensor>& params, const std::string& file);

 private:
  struct Swap {  // the averages in the parameters for the object's lifetime
    explicit Swap(Ema& ema);
    ~Swap();
    Ema& ema;
    std::vector<at::Tensor> trained;
  };

  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> averages_;  // empty when off
  double decay_;
};

}  // namespace dedpo
