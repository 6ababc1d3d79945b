#pragma once
// One exception type for every user-facing failure: the message says where (file, line, key) and
// what was expected, so the CLI can print it as it is.
#include <stdexcept>
#include <string>

namespace dedpo {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  // Defined in the core library (key function): the type information of an Error thrown by
  // plugin code lives in the core, not in a library that may be unloaded before it is caught.
  ~Error() override;
};

}  // namespace dedpo
