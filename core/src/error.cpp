#include "dedpo/error.hpp"
#include "dedpo/error_message.hpp"

#include <c10/util/Exception.h>

namespace dedpo {

Error::~Error() = default;

std::string error_message(const std::exception& error) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&error);
  if (torch_error == nullptr) return error.what();
  // The first line says what failed; LibTorch's source location and C++ stack follow it.
  std::string text = torch_error->what_without_backtrace();
  const std::size_t end = text.find('\n');
  if (end != std::string::npos) text.resize(end);
  return text;
}

}  // namespace dedpo
