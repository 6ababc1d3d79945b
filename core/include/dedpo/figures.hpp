#pragma once
#include <string>
#include <utility>
#include <vector>

namespace dedpo {

// Named numbers in a fixed order: a metric's results, a loss's diagnostics, a run's final
// evaluation.
using Figures = std::vector<std::pair<std::string, double>>;

}  // namespace dedpo
