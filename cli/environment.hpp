#pragma once
// `dedpo env`: what this process runs on (LibTorch build, the libraries actually loaded, devices),
// the first thing to read when a build or a machine behaves unexpectedly.
#include <ostream>

namespace dedpo::cli {

void print_environment(std::ostream& out);

}  // namespace dedpo::cli
