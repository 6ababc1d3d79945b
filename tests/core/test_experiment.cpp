// Experiment files: base inheritance, overrides, validation and the messages of every error.
#include "experiment_test.hpp"

TEST_F(ExperimentTest, DefaultsAreFilledAndPathsResolvedAgainstTheFile) {
  write_file(dir / "exp.toml", kMinimal);
  dedpo::Experiment experiment = load("exp.toml");
  EXPECT_EQ(experiment.run.name, "fixture");
  EXPECT_EQ(experiment.run.seed, 0u);
  EXPECT_EQ(experiment.train.steps, 1000);
  EXPECT_EQ(experiment.run.output.string(), path("runs"));
  ASSERT_TRUE(experiment.loss);
  EXPECT_DOUBLE_EQ(experiment.loss->options.real("scale"), 5.0);
  EXPECT_EQ(experiment.loss->options.string("mode"), "sum");
  EXPECT_FALSE(experiment.annotator);
  // The resolved config holds every option and loads back to the same thing.
  EXPECT_THAT(experiment.resolved_toml, HasSubstr("mode = 'sum'"));
  EXPECT_THAT(experiment.resolved_toml, HasSubstr("steps = 1000"));
  dedpo::Experiment again = dedpo::load_experiment_text(experiment.resolved_toml, "resolved",
                                                        dir.path(), {}, registry);
  EXPECT_EQ(again.resolved_toml, experiment.resolved_toml);
}

TEST_F(ExperimentTest, BaseIsDeepMergedAndOverridesApplyLast) {
  write_file(dir / "configs/base.toml", std::string(kMinimal) + "[train]\nsteps = 50\nlr = 0.5\n");
  write_file(dir / "configs/child.toml",
             "base = \"base.toml\"\n[train]\nsteps = 70\n[loss]\nmode = \"mean\"\n");
  dedpo::Experiment experiment = load("configs/child.toml");
  EXPECT_EQ(experiment.train.steps, 70);      // child wins
  EXPECT_DOUBLE_EQ(experiment.train.lr, 0.5);     // kept from base
  EXPECT_EQ(experiment.loss->plugin, "fixture_loss");     // table merged key by key
  EXPECT_EQ(experiment.loss->options.string("mode"), "mean");
  EXPECT_DOUBLE_EQ(experiment.loss->options.real("scale"), 5.0);

  experiment = load("configs/child.toml", {dedpo::parse_override("train.steps=9"),
                                           dedpo::parse_override("loss.mode = sum"),
                                           dedpo::parse_override("loss.lambda=0.25")});
  EXPECT_EQ(experiment.train.steps, 9);
  EXPECT_EQ(experiment.loss->options.string("mode"), "sum");  // bare word taken as a string
  EXPECT_DOUBLE_EQ(experiment.loss->options.real("lambda"), 0.25);
}

TEST_F(ExperimentTest, TomlSyntaxErrorsNameFileLineAndColumn) {
  write_file(dir / "bad.toml", "[run]\nname = \"x\"\nseed = = 3\n");
  EXPECT_THAT(error_of("bad.toml"), HasSubstr(path("bad.toml") + ":3:"));
  EXPECT_THAT(error_of("bad.toml"), HasSubstr("TOML syntax error"));
}

TEST_F(ExperimentTest, SchemaErrorsNameFileLineTableAndKey) {
  write_file(dir / "typo.toml", std::string(kMinimal) + "betta = 1.0\n");
  EXPECT_EQ(error_of("typo.toml"),
            path("typo.toml") + ":11:1: " + path("typo.toml") +
                " [loss] (loss 'fixture_loss'): unknown option 'betta'; known options: scale, mode, count, "
                "flag, lambda");
  write_file(dir / "near.toml", std::string(kMinimal) + "scael = 1.0\n");
  EXPECT_THAT(error_of("near.toml"), HasSubstr(":11:1: " + path("near.toml") +
                                               " [loss] (loss 'fixture_loss'): unknown option "
                                               "'scael'; did you mean 'scale'?"));

  write_file(dir / "type.toml", std::string(kMinimal) + "[train]\nsteps = \"many\"\n");
  EXPECT_EQ(error_of("type.toml"), path("type.toml") + ":12:9: " + path("type.toml") +
                                       " [train]: option 'steps' expects an integer, got string \"many\"");

  write_file(dir / "table.toml", std::string(kMinimal) + "[trian]\nsteps = 1\n");
  EXPECT_THAT(error_of("table.toml"), HasSubstr("unknown table or key 'trian'; did you mean 'train'?"));

  write_file(dir / "choice.toml", std::string(kMinimal) + "[train]\noptimizer = \"sgd\"\n");
  EXPECT_EQ(error_of("choice.toml"), path("choice.toml") +
                                         " [train]: option 'optimizer': expected one of \"adamw\", "
                                         "\"adafactor\", got \"sgd\"");

  write_file(dir / "fraction.toml", std::string(kMinimal) + "[train]\nlabelled_fraction = 1.5\n");
  EXPECT_THAT(error_of("fraction.toml"), HasSubstr("[train]: option 'labelled_fraction': expected a number in (0, 1]"));
}

TEST_F(ExperimentTest, PluginSlotErrors) {
  write_file(dir / "noplugin.toml", "[backbone]\nsize = 3\n");
  EXPECT_THAT(error_of("noplugin.toml"),
              HasSubstr("[backbone]: expected plugin = \"<name>\" naming a backbone plugin (known: fixture_backbone)"));
  write_file(dir / "unknown.toml", "[loss]\nplugin = \"fixture_los\"\n");
  EXPECT_EQ(error_of("unknown.toml"), path("unknown.toml") + ":2:10: " + path("unknown.toml") +
                                          " [loss]: no loss plugin named 'fixture_los'; did you "
                                          "mean 'fixture_loss'?");
  write_file(dir / "missing.toml", "[backbone]\nplugin = \"fixture_backbone\"\n");
  EXPECT_EQ(error_of("missing.toml"),
            path("missing.toml") + ": [train] objective = \"preference\" needs a [data] table");
}

TEST_F(ExperimentTest, BaseErrors) {
  write_file(dir / "a.toml", "base = \"b.toml\"\n");
  write_file(dir / "b.toml", "base = \"a.toml\"\n");
  EXPECT_THAT(error_of("a.toml"), HasSubstr("'base' forms a cycle through " + path("a.toml")));
  write_file(dir / "orphan.toml", "base = \"nowhere.toml\"\n");
  EXPECT_THAT(error_of("orphan.toml"), HasSubstr("base file 'nowhere.toml' does not exist"));
  EXPECT_THAT(error_of("nonexistent.toml"), HasSubstr("experiment file does not exist"));
  // A folder is no experiment, as a base or as the file itself (it used to read as empty: valid).
  std::filesystem::create_directories(dir / "configs.d");
  write_file(dir / "folder_base.toml", "base = \"configs.d\"\n");
  EXPECT_THAT(error_of("folder_base.toml"),
              HasSubstr("base 'configs.d' is a folder (" + path("configs.d") + "), not an experiment file"));
  EXPECT_THAT(error_of("configs.d"), HasSubstr(path("configs.d") + ": is a folder, not an experiment file"));
}

// An error in a value or key given by --set names that argument, not the experiment file's lines.
TEST_F(ExperimentTest, OverrideErrorsNameTheSetArgument) {
  write_file(dir / "exp.toml", kMinimal);
  EXPECT_THAT(error_of("exp.toml", {dedpo::parse_override("train.steps=many")}),
              testing::StartsWith("--set train.steps=many: "));
  EXPECT_THAT(error_of("exp.toml", {dedpo::parse_override("train.steps=many")}),
              HasSubstr("option 'steps' expects an integer, got string \"many\""));
  EXPECT_THAT(error_of("exp.toml", {dedpo::parse_override("loss.betta=1.0")}),
              testing::StartsWith("--set loss.betta=1.0: "));
  EXPECT_THAT(error_of("exp.toml", {dedpo::parse_override("loss.plugin=fixture_los")}),
              testing::StartsWith("--set loss.plugin=fixture_los: "));
  // Checks of the value itself (ranges, keywords) name it beside the table.
  EXPECT_THAT(error_of("exp.toml", {dedpo::parse_override("train.optimizer=sgd")}),
              HasSubstr("[train] (--set train.optimizer=sgd): option 'optimizer': expected one of"));
}

// run.name makes the folder <output>/<name>-<n>: a path there would leave run.output.
TEST_F(ExperimentTest, RunNameIsANameNotAPath) {
  for (const char* name : {"../../x", "a/b", "..", ""}) {
    std::string text = kMinimal;
    text.replace(text.find("\"fixture\""), std::string_view("\"fixture\"").size(), "\"" + std::string(name) + "\"");
    write_file(dir / "exp.toml", text);
    EXPECT_THAT(error_of("exp.toml"), HasSubstr("[run]: option 'name': expected a name without '/'")) << name;
  }
}

TEST_F(ExperimentTest, OverrideSyntax) {
  EXPECT_THROW(dedpo::parse_override("train.steps"), dedpo::Error);
  EXPECT_THROW(dedpo::parse_override("=3"), dedpo::Error);
  dedpo::Override change = dedpo::parse_override("a.b = \"x=y\"");
  EXPECT_EQ(change.key, "a.b");
  EXPECT_EQ(change.value, "\"x=y\"");
  write_file(dir / "exp.toml", kMinimal);
  EXPECT_THAT(error_of("exp.toml", {dedpo::parse_override("loss.plugin.x=1")}),
              HasSubstr("--set loss.plugin.x: 'plugin' is not a table"));
}

TEST_F(ExperimentTest, PluginPathsInTheExperimentAreLoaded) {
  dedpo::PluginRegistry empty;
  write_file(dir / "exp.toml", std::string("[plugins]\npaths = [\"") + DEDPO_FIXTURE_GOOD_DIR +
                                   "\"]\n" + kMinimal);
  dedpo::Experiment experiment = dedpo::load_experiment(dir / "exp.toml", {}, empty);
  EXPECT_EQ(experiment.loss->plugin, "fixture_loss");
  ASSERT_EQ(experiment.plugin_paths.size(), 1u);
}

TEST_F(ExperimentTest, LoadingRunsThePluginsOwnValidation) {
  write_file(dir / "exp.toml", kMinimal);
  EXPECT_NO_THROW(load("exp.toml"));
  EXPECT_EQ(error_of("exp.toml", {dedpo::parse_override("loss.mode=median")}),
            path("exp.toml") + " [loss] (loss 'fixture_loss') (--set loss.mode=median): option 'mode': expected \"sum\" "
                               "or \"mean\", got \"median\"");
}

TEST_F(ExperimentTest, RelativePathsAreRelativeToTheFileThatWritesThem) {
  std::string base = kMinimal;
  base.replace(base.find("name = \"fixture\""), 16, "name = \"fixture\"\noutput = \"base-runs\"");
  write_file(dir / "shared/base.toml", base);
  write_file(dir / "shared/init.pt", "weights");
  write_file(dir / "shared/more.toml", "base = \"base.toml\"\n[init]\nweights = \"init.pt\"\n");
  write_file(dir / "child.toml", "base = \"shared/more.toml\"\n");
  dedpo::Experiment experiment = load("child.toml");
  EXPECT_EQ(experiment.run.output.string(), path("shared/base-runs"));
  EXPECT_EQ(experiment.init.weights.string(), path("shared/init.pt"));
}

TEST_F(ExperimentTest, SwitchingAPluginKeepsOnlyTheOptionsTheNewPluginDeclares) {
  write_file(dir / "exp.toml", kMinimal);
  // `scale` belongs to fixture_loss; switching [loss] to the same plugin keeps it, and options
  // given with the switch still apply whatever their order.
  dedpo::Experiment experiment = load("exp.toml", {dedpo::parse_override("loss.mode=mean"),
                                                   dedpo::parse_override("loss.plugin=fixture_loss")});
  EXPECT_DOUBLE_EQ(experiment.loss->options.real("scale"), 5.0);
  EXPECT_EQ(experiment.loss->options.string("mode"), "mean");

  write_file(dir / "other.toml", std::string(kMinimal) + "unknown_to_fixture = 1\n");
  EXPECT_THAT(error_of("other.toml"), HasSubstr("unknown option 'unknown_to_fixture'"));
  // Options of the file's plugin that the new plugin does not declare go away with the switch;
  // shared ones (like beta across the DPO family) stay.
  std::string text = std::string(kMinimal) + "unknown_to_fixture = 1\n";
  const std::string loss_line = "plugin = \"fixture_loss\"";
  text.replace(text.find(loss_line), loss_line.size(), "plugin = \"previous_loss\"");
  write_file(dir / "switch.toml", text);
  experiment = load("switch.toml", {dedpo::parse_override("loss.count=4"),
                                    dedpo::parse_override("loss.plugin=fixture_loss")});
  EXPECT_DOUBLE_EQ(experiment.loss->options.real("scale"), 5.0);  // declared by both: kept
  EXPECT_EQ(experiment.loss->options.integer("count"), 4);
  // An unknown option given with the switch is still an error.
  EXPECT_THAT(error_of("switch.toml", {dedpo::parse_override("loss.plugin=fixture_loss"),
                                       dedpo::parse_override("loss.scael=1")}),
              HasSubstr("unknown option 'scael'; did you mean 'scale'?"));
}

TEST_F(ExperimentTest, VarsAreSubstitutedEverywhereAfterBasesAndOverrides) {
  // paths.toml is what a user edits once; the experiment only refers to its variables.
  write_file(dir / "paths.toml", "[vars]\nname = \"from-vars\"\nmode = \"mean\"\n");
  write_file(dir / "exp.toml", std::string("base = \"paths.toml\"\n") + R"(
[run]
name = "${name}-run"
[backbone]
plugin = "fixture_backbone"
[data]
plugin = "fixture_data"
[loss]
plugin = "fixture_loss"
mode = "${mode}"
[grid]
"loss.mode" = ["${mode}", "cost$$1"]
)");
  dedpo::Experiment experiment = load("exp.toml");
  EXPECT_EQ(experiment.run.name, "from-vars-run");
  EXPECT_EQ(experiment.loss->options.string("mode"), "mean");
  EXPECT_THAT(experiment.grid_toml, HasSubstr("'mean'"));
  EXPECT_THAT(experiment.grid_toml, HasSubstr("cost$1"));
  EXPECT_THAT(experiment.resolved_toml, testing::Not(HasSubstr("[vars]")));
  EXPECT_THAT(experiment.resolved_toml, testing::Not(HasSubstr("${")));

  // --set vars.NAME reaches every use; an override's own text is substituted too.
  experiment = load("exp.toml", {dedpo::parse_override("vars.mode=sum"),
                                 dedpo::parse_override("run.name=${name}-2")});
  EXPECT_EQ(experiment.loss->options.string("mode"), "sum");
  EXPECT_EQ(experiment.run.name, "from-vars-2");

  // A path made of variables is relative to the experiment file; "$$" survives the round trip
  // through the resolved configuration that resumed runs read back.
  experiment = load("exp.toml", {dedpo::parse_override("vars.out=results"),
                                 dedpo::parse_override("run.output=${out}/runs"),
                                 dedpo::parse_override("run.name=a$$b")});
  EXPECT_EQ(experiment.run.output.string(), path("results/runs"));
  EXPECT_EQ(experiment.run.name, "a$b");
  dedpo::Experiment again =
      dedpo::load_experiment_text(experiment.resolved_toml, "resolved", dir.path(), {}, registry);
  EXPECT_EQ(again.run.name, "a$b");
  EXPECT_EQ(again.resolved_toml, experiment.resolved_toml);
}

TEST_F(ExperimentTest, VarErrorsNameTheFileLineAndTheKnownVariables) {
  write_file(dir / "exp.toml", std::string(kMinimal) +
                                   "[vars]\nmodel = \"m\"\n[train]\nprecision = \"${modle}\"\n");
  const std::string error = error_of("exp.toml");
  EXPECT_THAT(error, HasSubstr(path("exp.toml")));
  EXPECT_THAT(error, HasSubstr(":14:"));
  EXPECT_THAT(error, HasSubstr("unknown variable '${modle}'; [vars] defines model"));
  EXPECT_THAT(error, HasSubstr("did you mean 'model'?"));

  write_file(dir / "open.toml", std::string(kMinimal) + "[train]\nprecision = \"${model\"\n");
  EXPECT_THAT(error_of("open.toml"), HasSubstr("unclosed '${'"));
  write_file(dir / "typed.toml", std::string(kMinimal) + "[vars]\nsteps = 3\n");
  EXPECT_THAT(error_of("typed.toml"), HasSubstr("[vars] steps: expected a string"));
}

TEST_F(ExperimentTest, LogTableIsCheckedAndJoinsTheResolvedConfigOnlyWhenUsed) {
  write_file(dir / "plain.toml", kMinimal);
  dedpo::Experiment plain = load("plain.toml");
  EXPECT_FALSE(plain.log.tensorboard);
  // At its defaults [log] is left out: experiments that do not use it keep their identity.
  EXPECT_THAT(plain.resolved_toml, testing::Not(HasSubstr("[log]")));

  write_file(dir / "board.toml", std::string(kMinimal) + "[log]\ntensorboard = true\n");
  dedpo::Experiment board = load("board.toml");
  EXPECT_TRUE(board.log.tensorboard);
  EXPECT_THAT(board.resolved_toml, HasSubstr("[log]\ntensorboard = true"));
  dedpo::Experiment again =
      dedpo::load_experiment_text(board.resolved_toml, "resolved", dir.path(), {}, registry);
  EXPECT_TRUE(again.log.tensorboard);

  write_file(dir / "word.toml", std::string(kMinimal) + "[log]\ntensorboard = \"yes\"\n");
  EXPECT_EQ(error_of("word.toml"), path("word.toml") + ":12:15: " + path("word.toml") +
                                       " [log]: option 'tensorboard' expects a boolean, got string "
                                       "\"yes\"");
  write_file(dir / "typo.toml", std::string(kMinimal) + "[log]\ntensorbord = true\n");
  EXPECT_THAT(error_of("typo.toml"),
              HasSubstr("[log]: unknown option 'tensorbord'; did you mean 'tensorboard'?"));
}

TEST_F(ExperimentTest, ReportTableIsTypedAndKeptOutOfTheRunsConfig) {
  write_file(dir / "exp.toml",
             std::string(kMinimal) + "[report]\nbaseline = \"dpo-25h\"\nprimary = \"reward\"\n");
  dedpo::Experiment experiment = load("exp.toml");
  EXPECT_EQ(experiment.report.baseline, "dpo-25h");
  EXPECT_EQ(experiment.report.primary, "reward");
  // How a grid is reported is no input of its runs: changing it makes no run stale.
  write_file(dir / "plain.toml", kMinimal);
  EXPECT_EQ(experiment.resolved_toml, load("plain.toml").resolved_toml);

  write_file(dir / "typo.toml", std::string(kMinimal) + "[report]\nbaselin = \"dpo\"\n");
  EXPECT_THAT(error_of("typo.toml"), HasSubstr("[report]: unknown option 'baselin'; did you mean 'baseline'?"));
  write_file(dir / "type.toml", std::string(kMinimal) + "[report]\nprimary = 3\n");
  EXPECT_THAT(error_of("type.toml"), HasSubstr("[report]"));
  EXPECT_THAT(error_of("type.toml"), HasSubstr("primary"));
}
