#pragma once
// Exceptions as one line for the user, whatever threw them, with what was being done.
#include <exception>
#include <string>
#include <utility>

#include "dedpo/error.hpp"

namespace dedpo {

// An exception's message for the user: of a LibTorch error (c10::Error), its first line only,
// without the source location and C++ stack trace it carries.
std::string error_message(const std::exception& error);

// Runs `work`; any failure becomes one dedpo::Error "<doing>: <message>", e.g. doing = "sd15:
// loading the UNet from unet/diffusion_pytorch_model.safetensors".
template <class Work>
decltype(auto) with_context(const std::string& doing, Work&& work) {
  try {
    return std::forward<Work>(work)();
  } catch (const std::exception& error) {
    throw Error(doing + ": " + error_message(error));
  }
}

}  // namespace dedpo
