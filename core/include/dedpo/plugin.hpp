#pragma once
// The plugin ABI: every plugin library exports exactly one `dedpo_library_info` symbol pointing
// at a LibraryInfo. The loader reads `abi_version` and `struct_size` before anything else, then
// the LibTorch version the library was built against, so a library built against another SDK or
// LibTorch is refused with a clear message instead of crashing.
//
// Usage, in one .cpp of the plugin library:
//
//   DEDPO_PLUGIN_LIBRARY(
//       dedpo::describe<MyLoss>("my_loss", "1.0.0", "One-line description.", kMyLossOptions))
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>

#include <boost/dll/alias.hpp>
#include <torch/version.h>

#include "dedpo/options.hpp"

namespace dedpo {

// Bump on any change to the structs below or to a plugin interface's virtual table.
// 3: image backbones, pair side information, AnnotatorContext::cache_dir.
// 4: LibraryInfo::build; typed ExperimentServices::make_loss and experiment_loss_options;
//    Metric::title.
// 5: PairTerms::fold_key (cross-fitted estimates in losses).
// 6: PairTerms::labelled_stream_size, Loss::takes_two_stream_batches (two-stream batches).
// 7: MetricContext::samples (the images a metric scores, kept by the run).
// 8: Loss::step_statistics and Loss::end_step (running statistics summed over the ranks);
//    Annotator::shardable (annotation sharded over the ranks).
inline constexpr std::uint32_t kAbiVersion = 8;

// Adding a kind: append here, add its name to to_string()/kind_from_string(), give its interface
// `static constexpr PluginKind kind`.
enum class PluginKind : std::uint32_t { backbone, annotator, loss, dataset, metric };
inline constexpr PluginKind kAllPluginKinds[] = {PluginKind::backbone, PluginKind::annotator,
                                                 PluginKind::loss, PluginKind::dataset,
                                                 PluginKind::metric};

const char* to_string(PluginKind kind);

// Base of every plugin interface. Its key function lives in the core library, so type
// information is shared and the loader can check the dynamic type of what a factory made.
class Plugin {
 public:
  virtual ~Plugin();
};

using PluginFactory = std::unique_ptr<Plugin> (*)(const Options& options);

struct PluginDescriptor {
  PluginKind kind;
  const char* name;
  const char* version;
  const char* description;
  const OptionSpec* options;
  std::size_t option_count;
  PluginFactory create;
};

// The toolchain a library was built with. Plugins are C++ classes crossing the library boundary:
// the loader refuses a library built against another LibTorch, and shows compiler and standard
// library (`dedpo plugins show`) to explain other mismatches.
struct BuildInfo {
  const char* compiler;
  const char* standard_library;
  const char* libtorch;  // TORCH_VERSION
};

struct LibraryInfo {
  std::uint32_t abi_version;
  std::uint32_t struct_size;  // sizeof(LibraryInfo) in the SDK the library was built with
  const PluginDescriptor* plugins;
  std::size_t plugin_count;
  BuildInfo build;
};

// The host's own toolchain, compiled into the core library.
const BuildInfo& host_build_info();

template <class T>
std::unique_ptr<Plugin> construct_plugin(const Options& options) {
  return std::make_unique<T>(options);
}

// Describes plugin class T (derived from one plugin interface; constructed from Options).
template <class T, std::size_t N>
constexpr PluginDescriptor describe(const char* name, const char* version, const char* description,
                                    const OptionSpec (&options)[N]) {
  return {T::kind, name, version, description, options, N, &construct_plugin<T>};
}
template <class T>
constexpr PluginDescriptor describe(const char* name, const char* version,
                                    const char* description) {
  return {T::kind, name, version, description, nullptr, 0, &construct_plugin<T>};
}

}  // namespace dedpo

#define DEDPO_STRINGIFY_VALUE(x) DEDPO_STRINGIFY_TEXT(x)
#define DEDPO_STRINGIFY_TEXT(x) #x
#if defined(__clang__)
#define DEDPO_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define DEDPO_COMPILER "gcc " __VERSION__
#else
#define DEDPO_COMPILER "unknown compiler"
#endif
#if defined(_LIBCPP_VERSION)
#define DEDPO_STANDARD_LIBRARY "libc++ " DEDPO_STRINGIFY_VALUE(_LIBCPP_VERSION)
#elif defined(__GLIBCXX__)
#define DEDPO_STANDARD_LIBRARY "libstdc++ " DEDPO_STRINGIFY_VALUE(__GLIBCXX__)
#else
#define DEDPO_STANDARD_LIBRARY "unknown standard library"
#endif
// The toolchain of the translation unit that expands it: in DEDPO_PLUGIN_LIBRARY, the plugin's.
#define DEDPO_BUILD_INFO ::dedpo::BuildInfo{DEDPO_COMPILER, DEDPO_STANDARD_LIBRARY, TORCH_VERSION}

#define DEDPO_PLUGIN_LIBRARY(...)                                                              \
  namespace dedpo_plugin_library {                                                             \
  const ::dedpo::PluginDescriptor descriptors[] = {__VA_ARGS__};                               \
  const ::dedpo::LibraryInfo library_info = {::dedpo::kAbiVersion,                             \
                                             sizeof(::dedpo::LibraryInfo), descriptors,        \
                                             std::size(descriptors), DEDPO_BUILD_INFO};        \
  }                                                                                            \
  BOOST_DLL_ALIAS(dedpo_plugin_library::library_info, dedpo_library_info)
