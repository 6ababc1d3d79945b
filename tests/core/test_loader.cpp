// The loader: broken libraries give one specific error each and do not stop the others; plugin
// objects keep their library loaded.
#include <dlfcn.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "dedpo/loss.hpp"
#include "dedpo/host/registry.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using dedpo::PluginKind;
using dedpo::PluginRegistry;
using testing::HasSubstr;

namespace {

const fs::path kGood = DEDPO_FIXTURE_GOOD_DIR;
const fs::path kBroken = DEDPO_FIXTURE_BROKEN_DIR;

std::string problem_for(const PluginRegistry& registry, const std::string& file_name) {
  for (const dedpo::LoadProblem& problem : registry.problems()) {
    if (problem.file.filename() == file_name) return problem.message;
  }
  return "(no problem recorded for " + file_name + ")";
}

bool library_is_loaded(const fs::path& file) {
  void* handle = dlopen(file.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (!handle) return false;
  dlclose(handle);
  return true;
}

}  // namespace

TEST(Loader, BrokenLibrariesEachGiveOneSpecificErrorAndTheRestStillLoads) {
  PluginRegistry registry;
  registry.load_directory(kGood);
  registry.load_directory(kBroken);

  const std::string bad_abi = problem_for(registry, "dedpo_fixture_bad_abi.so");
  EXPECT_THAT(bad_abi, HasSubstr((kBroken / "dedpo_fixture_bad_abi.so").string()));
  EXPECT_THAT(bad_abi, HasSubstr("plugin ABI version mismatch: expected " +
                                 std::to_string(dedpo::kAbiVersion) + ", found " +
                                 std::to_string(dedpo::kAbiVersion + 41)));

  EXPECT_THAT(problem_for(registry, "dedpo_fixture_bad_size.so"),
              HasSubstr("plugin metadata size mismatch: expected " +
                        std::to_string(sizeof(dedpo::LibraryInfo)) + " bytes, found " +
                        std::to_string(sizeof(dedpo::LibraryInfo) + 8)));
  EXPECT_THAT(problem_for(registry, "dedpo_fixture_other_libtorch.so"),
              HasSubstr("built against LibTorch 0.0.1-fixture (" + std::string(DEDPO_COMPILER) +
                        ", " + DEDPO_STANDARD_LIBRARY + "), but this program uses LibTorch " +
                        TORCH_VERSION + "; rebuild the plugin against this LibTorch"));
  EXPECT_THAT(problem_for(registry, "dedpo_fixture_no_entry.so"),
              HasSubstr("not a dedpo plugin library: entry symbol 'dedpo_library_info' not found"));
  EXPECT_THAT(problem_for(registry, "dedpo_fixture_duplicate.so"),
              HasSubstr("duplicate plugin loss 'fixture_loss': already provided by " +
                        (kGood / "dedpo_fixture_good.so").string()));
  EXPECT_THAT(problem_for(registry, "fixture_not_elf.so"),
              HasSubstr("not an ELF shared library (24 bytes, no ELF header)"));
  EXPECT_EQ(registry.problems().size(), 6u);

  // The good plugin survived, and is the first one loaded, not the duplicate.
  const dedpo::PluginEntry& entry = registry.find(PluginKind::loss, "fixture_loss");
  EXPECT_STREQ(entry.descriptor->version, "0.1.0");
  EXPECT_STREQ(entry.build->libtorch, dedpo::host_build_info().libtorch);
  EXPECT_EQ(registry.plugins(PluginKind::loss).size(), 1u);
  EXPECT_EQ(registry.try_find(PluginKind::loss, "fixture_bad_abi"), nullptr);
  EXPECT_EQ(registry.try_find(PluginKind::loss, "fixture_other_libtorch"), nullptr);
}

// A plugin folder with a good library beside files that are not usable libraries.
void fill_with_bad_files(const fs::path& folder) {
  fs::copy_file(kGood / "dedpo_fixture_good.so", folder / "dedpo_fixture_good.so");
  fs::copy_file(kGood / "dedpo_fixture_good.so", folder / "half.so");
  fs::resize_file(folder / "half.so", fs::file_size(folder / "half.so") / 2);
  fs::create_symlink("loop.so", folder / "loop.so");
  fs::create_symlink("vanished-target.so", folder / "gone.so");
  dedpo::test::write_file(folder / "text.so", "not a library\n");
  dedpo::test::write_file(folder / "empty.so", "");
}

TEST(Loader, EachUnusableFileIsItsOwnProblemAndTheRestLoads) {
  dedpo::test::TempDir temp;
  fill_with_bad_files(temp.path());
  PluginRegistry registry;
  registry.load_directory(temp.path());
  // Each bad file is named with what is wrong; a truncated library is refused before dlopen
  // (which would map pages beyond its end and stop the process with SIGBUS).
  EXPECT_THAT(problem_for(registry, "half.so"),
              HasSubstr((temp / "half.so").string() +
                        ": truncated or corrupt library: its ELF headers describe data beyond its"));
  EXPECT_THAT(problem_for(registry, "loop.so"),
              HasSubstr((temp / "loop.so").string() + ": cannot read: "));
  EXPECT_THAT(problem_for(registry, "loop.so"), HasSubstr("symbolic links"));
  EXPECT_THAT(problem_for(registry, "gone.so"), HasSubstr(": cannot read: "));
  EXPECT_THAT(problem_for(registry, "text.so"), HasSubstr("not an ELF shared library (14 bytes"));
  EXPECT_THAT(problem_for(registry, "empty.so"), HasSubstr("not an ELF shared library (0 bytes"));
  EXPECT_EQ(registry.problems().size(), 5u);
  EXPECT_NE(registry.try_find(PluginKind::loss, "fixture_loss"), nullptr);
}

TEST(Loader, CommandsWorkBesideUnusableFilesOnThePluginPath) {
  dedpo::test::TempDir temp;
  fill_with_bad_files(temp.path());
  const std::string path = "DEDPO_PLUGIN_PATH='" + temp.path().string() + "' ";
  auto result = dedpo::test::run_shell(path + "'" + DEDPO_EXECUTABLE + "' plugins");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("fixture_loss"));  // the good library on that path
  EXPECT_THAT(result.output, HasSubstr("  dedpo "));      // the program's own plugins
  for (const char* name : {"half.so", "loop.so", "gone.so", "text.so", "empty.so"}) {
    EXPECT_THAT(result.output, HasSubstr("warning: " + (temp / name).string() + ": ")) << name;
  }
  result = dedpo::test::run_shell(path + "'" + DEDPO_EXECUTABLE + "' plugins show dedpo");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("loss 'dedpo'"));
}

TEST(Loader, MissingFolderAndUnknownPluginAreReported) {
  PluginRegistry registry;
  registry.load_directory("/nonexistent/dedpo/plugins");
  ASSERT_EQ(registry.problems().size(), 1u);
  EXPECT_THAT(registry.problems()[0].message, HasSubstr("plugin folder does not exist"));

  registry.load_directory(kGood);
  try {
    registry.find(PluginKind::loss, "fixture_los");
    FAIL() << "expected an error";
  } catch (const dedpo::Error& error) {
    EXPECT_STREQ(error.what(), "no loss plugin named 'fixture_los'; did you mean 'fixture_loss'?");
  }
  try {
    registry.find(PluginKind::metric, "anything");
    FAIL() << "expected an error";
  } catch (const dedpo::Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("no metric plugin named 'anything'"));
  }
}

TEST(Loader, ObjectKeepsItsLibraryLoadedAfterTheRegistryIsGone) {
  const fs::path library = fs::weakly_canonical(kGood / "dedpo_fixture_good.so");
  ASSERT_FALSE(library_is_loaded(library)) << "another test left the fixture loaded";
  std::shared_ptr<dedpo::Loss> loss;
  {
    PluginRegistry registry;
    registry.load_directory(kGood);
    loss = registry.create<dedpo::Loss>("fixture_loss", "scale = 3.0");
  }
  // The registry is destroyed; the object's deleter still holds the library.
  ASSERT_TRUE(library_is_loaded(library));
  dedpo::PairTerms terms;
  terms.model_err_a = at::ones({4});
  terms.model_err_b = at::zeros({4});
  dedpo::LossResult result = loss->compute(terms);  // runs code inside the library
  EXPECT_DOUBLE_EQ(result.loss.item<double>(), 3.0);
  loss.reset();  // destroys the object (code in the library), then releases the library
  EXPECT_FALSE(library_is_loaded(library));
}

TEST(Loader, OptionsAreValidatedAgainstTheSchema) {
  PluginRegistry registry;
  registry.load_directory(kGood);
  dedpo::Options options = registry.resolve_options(PluginKind::loss, "fixture_loss",
                                                    "scale = 4\ncount = 7", "test");
  EXPECT_DOUBLE_EQ(options.real("scale"), 4.0);  // an integer is a valid number
  EXPECT_EQ(options.integer("count"), 7);
  EXPECT_EQ(options.string("mode"), "sum");  // defaults filled in
  EXPECT_FALSE(options.boolean("flag"));
  EXPECT_TRUE(options.is_string("lambda"));
  EXPECT_EQ(options.string("lambda"), "auto");
  options = registry.resolve_options(PluginKind::loss, "fixture_loss", "lambda = 0.5", "test");
  EXPECT_DOUBLE_EQ(options.real("lambda"), 0.5);

  auto error_of = [&](const std::string& text) {
    try {
      registry.resolve_options(PluginKind::loss, "fixture_loss", text, "exp.toml [loss]");
    } catch (const dedpo::Error& error) {
      return std::string(error.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(error_of("scael = 1.0"),
            "exp.toml [loss]:1:1: exp.toml [loss]: unknown option 'scael'; did you mean 'scale'?");
  EXPECT_EQ(error_of("count = 1.5"),
            "exp.toml [loss]:1:9: exp.toml [loss]: option 'count' expects an integer, got number 1.5");
  EXPECT_EQ(error_of("flag = \"yes\""),
            "exp.toml [loss]:1:8: exp.toml [loss]: option 'flag' expects a boolean, got string \"yes\"");
  EXPECT_EQ(error_of("lambda = true"),
            "exp.toml [loss]:1:10: exp.toml [loss]: option 'lambda' expects a number or string, got boolean true");
  EXPECT_THAT(error_of("scale = "), HasSubstr("exp.toml [loss]:1:"));

  // A value the schema cannot judge is refused by the plugin itself, naming the option.
  try {
    registry.create<dedpo::Loss>("fixture_loss", "mode = \"median\"");
    FAIL() << "expected an error";
  } catch (const dedpo::Error& error) {
    EXPECT_STREQ(error.what(),
                 "loss 'fixture_loss': option 'mode': expected \"sum\" or \"mean\", got \"median\"");
  }
}

TEST(Loader, DidYouMeanSuggestsOnlyPlausibleTypos) {
  EXPECT_EQ(dedpo::closest_match("lamda", {"lambda", "beta"}), "lambda");
  EXPECT_EQ(dedpo::closest_match("bta", {"lambda", "beta"}), "beta");
  EXPECT_EQ(dedpo::closest_match("completely_different", {"lambda", "beta"}), "");
}
