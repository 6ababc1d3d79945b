#include "dedpo/sd/checkpoint.hpp"

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dedpo/autocast.hpp"

namespace dedpo::sd {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// fn and the parameters it reads, kept in the node's saved_data until backward.
struct CheckpointedCall : torch::CustomClassHolder {
  CheckpointedCall(CheckpointedFn f, std::vector<at::Tensor> p) : fn(std::move(f)), parameters(std::move(p)) {}
  CheckpointedFn fn;
  std::vector<at::Tensor> parameters;
};

// The autocast state of both device types a block can run on: the replay in backward must cast
// exactly as the forward did.
struct AutocastStates {
  AutocastState cpu = AutocastState::current(c10::DeviceType::CPU);
  AutocastState cuda = AutocastState::current(c10::DeviceType::CUDA);
};

// Sets autocast to the given states for its lifetime, with autocast's weight-cast cache off: the
// forward runs without grad, and a cast cached there (without history back to the float32 weight)
// would be reused by a later grad-enabled use and silently cut that weight's gradient.
class AutocastScope {
 public:
  explicit AutocastScope(const AutocastStates& states) : cache_(at::autocast::is_autocast_cache_enabled()) {
    states.cpu.apply(c10::DeviceType::CPU);
    states.cuda.apply(c10::DeviceType::CUDA);
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~AutocastScope() {
    at::autocast::set_autocast_cache_enabled(cache_);
    previous_.cpu.apply(c10::DeviceType::CPU);
    previous_.cuda.apply(c10::DeviceType::CUDA);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  AutocastStates previous_;
  bool cache_;
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // Runs without grad (Function::apply disables it); only `inputs` are saved.
  static variable_list forward(AutogradContext* ctx, const c10::intrusive_ptr<CheckpointedCall>& call,
                               at::TensorList inputs, at::TensorList /*parameters: graph edges only*/) {
    ctx->set_materialize_grads(false);
    ctx->saved_data["call"] = at::IValue::make_capsule(call);
    const AutocastStates states;
    ctx->saved_data["autocast_cpu"] = states.cpu.enabled;
    ctx->saved_data["autocast_cpu_dtype"] = static_cast<int64_t>(states.cpu.dtype);
    ctx->saved_data["autocast_cuda"] = states.cuda.enabled;
    ctx->saved_data["autocast_cuda_dtype"] = static_cast<int64_t>(states.cuda.dtype);
    ctx->save_for_backward(inputs.vec());
    AutocastScope same(states);
    return call->fn(inputs.vec());
  }

  // Gradients in forward's argument order: none for `call`, then inputs, then parameters.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto holder = ctx->saved_data["call"].toCapsule();
    const auto& call = static_cast<const CheckpointedCall&>(*holder);
    variable_list inputs = ctx->get_saved_variables();
    const std::size_t n_inputs = inputs.size();

    variable_list wrt;  // the inputs and parameters that need a gradient, and their edge indices
    std::vector<std::size_t> wrt_edge;
    for (std::size_t i = 0; i < n_inputs; ++i) {
      if (!inputs[i].defined()) continue;
      inputs[i] = inputs[i].detach();
      if (ctx->needs_input_grad(i)) {
        inputs[i].requires_grad_(true);
        wrt.push_back(inputs[i]);
        wrt_edge.push_back(i);
      }
    }
    for (std::size_t j = 0; j < call.parameters.size(); ++j) {
      if (ctx->needs_input_grad(n_inputs + j)) {
        wrt.push_back(call.parameters[j]);
        wrt_edge.push_back(n_inputs + j);
      }
    }

    variable_list outputs;
    {
      at::AutoGradMode grad_mode(true);
      AutocastStates in_forward;
      in_forward.cpu = {ctx->saved_data["autocast_cpu"].toBool(),
                        static_cast<at::ScalarType>(ctx->saved_data["autocast_cpu_dtype"].toInt())};
      in_forward.cuda = {ctx->saved_data["autocast_cuda"].toBool(),
                         static_cast<at::ScalarType>(ctx->saved_data["autocast_cuda_dtype"].toInt())};
      AutocastScope as_in_forward(in_forward);
      outputs = call.fn(inputs);
    }
    variable_list roots, root_grads;
    for (std::size_t k = 0; k < outputs.size(); ++k) {
      if (outputs[k].requires_grad() && grad_outputs[k].defined()) {
        roots.push_back(outputs[k]);
        root_grads.push_back(grad_outputs[k]);
      }
    }
    variable_list result(1 + n_inputs + call.parameters.size());
    if (roots.empty() || wrt.empty()) return result;
    const variable_list grads = torch::autograd::grad(roots, wrt, root_grads, /*retain_graph=*/false,
                                                      /*create_graph=*/false, /*allow_unused=*/true);
    for (std::size_t m = 0; m < grads.size(); ++m) result[1 + wrt_edge[m]] = grads[m];
    return result;
  }
};

}  // namespace

std::vector<at::Tensor> checkpoint(const CheckpointedFn& fn, const std::vector<at::Tensor>& inputs,
                                   const std::vector<at::Tensor>& parameters) {
  if (!at::GradMode::is_enabled()) return fn(inputs);
  return CheckpointFunction::apply(c10::make_intrusive<CheckpointedCall>(fn, parameters), at::TensorList(inputs),
                                   at::TensorList(parameters));
}

}  // namespace dedpo::sd
