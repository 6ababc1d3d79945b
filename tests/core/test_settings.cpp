// The typed core settings: one rule per [run] / [train] / [eval] option, each bad value named,
// and run.device for every form it takes.
#include "experiment_test.hpp"

namespace {

// The minimal experiment after one override; the error text when it does not load.
class SettingsTest : public ExperimentTest {
 protected:
  void SetUp() override {
    ExperimentTest::SetUp();
    write_file(dir / "exp.toml", kMinimal);
  }
  dedpo::Experiment load_with(const std::string& key, const std::string& value) {
    return load("exp.toml", {{key, value}});
  }
  std::string error_with(const std::string& key, const std::string& value) {
    return error_of("exp.toml", {{key, value}});
  }
};

}  // namespace

TEST_F(SettingsTest, EveryBadTrainValueIsNamedWithWhatWasExpected) {
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"objective", "\"ranking\"", "expected one of \"preference\", \"denoising\", got \"ranking\""},
      {"steps", "0", "expected a positive integer, got 0"},
      {"batch_size", "0", "expected a positive integer, got 0"},
      {"grad_accum", "-1", "expected a positive integer, got -1"},
      {"batches", "\"mixed\"", "expected one of \"pooled\", \"two_stream\", got \"mixed\""},
      {"labelled_batch_size", "-1", "expected a non-negative integer, got -1"},
      {"labelled_batch_size", "16",
       "applies to batches = \"two_stream\" only (batches is \"pooled\"), got 16"},
      {"labelled_fraction", "0.0", "expected a number in (0, 1], got 0"},
      {"labelled_fraction", "1.5", "expected a number in (0, 1], got 1.5"},
      {"split", "\"sideways\"", "expected one of \"random\", \"by_prompt\", got \"sideways\""},
      {"ties", "\"half\"", "expected one of \"keep\", \"drop\", got \"half\""},
      {"optimizer", "\"sgd\"", "expected one of \"adamw\", \"adafactor\", got \"sgd\""},
      {"lr", "0.0", "expected a number in (0, inf), got 0"},
      {"weight_decay", "-0.1", "expected a number in [0, inf), got -0.1"},
      {"adam_beta1", "1.0", "expected a number in [0, 1), got 1"},
      {"adam_beta2", "-0.5", "expected a number in [0, 1), got -0.5"},
      {"adam_eps", "0.0", "expected a number in (0, inf), got 0"},
      {"warmup_steps", "-1", "expected a non-negative integer, got -1"},
      {"schedule", "\"exponential\"",
       "expected one of \"constant\", \"linear\", \"cosine\", got \"exponential\""},
      {"max_grad_norm", "-1.0", "expected a number in [0, inf) (0 = off), got -1"},
      {"precision", "\"fp16\"", "expected one of \"fp32\", \"bf16\", got \"fp16\""},
      {"ema_decay", "1.0", "expected a number in [0, 1) (0 = off), got 1"},
      {"checkpoint_every", "-2", "expected a non-negative integer, got -2"},
      {"log_every", "-1", "expected a non-negative integer, got -1"},
  };
  for (const auto& [key, value, message] : cases) {
    EXPECT_EQ(error_with("train." + key, value),
              path("exp.toml") + " [train] (--set train." + key + "=" + value + "): option '" + key + "': " + message);
  }
}

TEST_F(SettingsTest, TwoStreamBatchesNeedTwoNonEmptyStreamsOfPairsAndALossThatTakesThem) {
  const dedpo::Override two_stream{"train.batches", "\"two_stream\""};
  auto error = [&](std::vector<dedpo::Override> more) {
    more.insert(more.begin(), two_stream);
    return error_of("exp.toml", more);
  };
  EXPECT_THAT(error({{"train.labelled_batch_size", "64"}}),
              testing::HasSubstr("option 'labelled_batch_size': expected an integer in [1, "
                                 "batch_size) = [1, 64) so that both streams draw pairs, got 64"));
  EXPECT_THAT(error({{"train.batch_size", "1"}}),
              testing::HasSubstr("option 'batches': \"two_stream\" needs batch_size >= 2 (a "
                                 "pair for each stream), got 1"));
  EXPECT_THAT(error({{"train.objective", "\"denoising\""}}),
              testing::HasSubstr("option 'batches': \"two_stream\" draws pairs: it needs "
                                 "objective = \"preference\""));
  // The options are right; the fixture loss (labelled pool) cannot take them.
  EXPECT_EQ(error({{"train.labelled_batch_size", "8"}}),
            path("exp.toml") + ": [train] batches = \"two_stream\": loss 'fixture_loss' does not "
            "take two-stream batches (it trains on the labelled pairs only, so there is no "
            "all-pairs term for a second stream); use batches = \"pooled\"");
}

TEST_F(SettingsTest, GoodValuesAreTyped) {
  dedpo::Experiment e = load_with("train.split", "\"by_prompt\"");
  EXPECT_EQ(e.train.split, dedpo::LabelSplit::by_prompt);
  EXPECT_EQ(e.train.objective, dedpo::Objective::preference);
  EXPECT_EQ(e.train.log_every, 10);
  EXPECT_EQ(load_with("train.log_every", "0").train.log_every, 1);  // 0 = every step
  EXPECT_EQ(load_with("train.labelled_fraction", "1.0").train.labelled_fraction, 1.0);
  EXPECT_EQ(load_with("train.schedule", "\"cosine\"").train.schedule, dedpo::LrSchedule::cosine);
  EXPECT_EQ(load_with("train.optimizer", "\"adafactor\"").train.optimizer,
            dedpo::OptimizerKind::adafactor);
  EXPECT_EQ(load_with("train.precision", "\"bf16\"").train.precision, dedpo::Precision::bf16);
  EXPECT_EQ(load_with("train.ties", "\"drop\"").train.ties, dedpo::TiePolicy::drop);
  EXPECT_EQ(e.train.batches, dedpo::BatchComposition::pooled);
  EXPECT_EQ(e.train.labelled_batch_size, 0);
}

TEST_F(SettingsTest, BadRunAndEvalValuesAreNamed) {
  EXPECT_EQ(error_with("run.threads", "-1"),
            path("exp.toml") + " [run] (--set run.threads=-1): option 'threads': expected a non-negative integer, got -1");
  EXPECT_EQ(error_with("eval.every", "-1"),
            path("exp.toml") + " [eval] (--set eval.every=-1): option 'every': expected a non-negative integer, got -1");
}

TEST(Device, EveryFormParses) {
  using Kind = dedpo::DeviceRequest::Kind;
  EXPECT_EQ(dedpo::parse_device("auto").kind, Kind::automatic);
  EXPECT_EQ(dedpo::parse_device("cpu").kind, Kind::cpu);
  EXPECT_EQ(dedpo::parse_device("cuda").kind, Kind::cuda);
  EXPECT_EQ(dedpo::parse_device("cuda").index, 0);
  EXPECT_EQ(dedpo::parse_device("cuda:3").index, 3);
  EXPECT_FALSE(dedpo::parse_device("cuda").index_given);
  EXPECT_TRUE(dedpo::parse_device("cuda:0").index_given);
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "cuda:99999", ""}) {
    EXPECT_THAT([&] { dedpo::parse_device(bad); },
                testing::ThrowsMessage<dedpo::Error>(HasSubstr(
                    "expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"" + std::string(bad) +
                    "\"")));
  }
}

TEST(Device, ResolvesAgainstTheDevicesAMachineHas) {
  const c10::Device cpu(c10::kCPU);
  auto resolve = [](const char* text, int cuda_devices) {
    return dedpo::resolve_device(dedpo::parse_device(text), cuda_devices);
  };
  EXPECT_EQ(resolve("auto", 0), cpu);
  EXPECT_EQ(resolve("auto", 2), c10::Device(c10::kCUDA, 0));
  EXPECT_EQ(resolve("cpu", 0), cpu);
  EXPECT_EQ(resolve("cpu", 2), cpu);
  EXPECT_EQ(resolve("cuda", 1), c10::Device(c10::kCUDA, 0));
  EXPECT_EQ(resolve("cuda:1", 2), c10::Device(c10::kCUDA, 1));
  EXPECT_THAT([&] { resolve("cuda", 0); },
              testing::ThrowsMessage<dedpo::Error>(
                  "asked for cuda:0, but this machine has no CUDA device (LibTorch sees none); "
                  "use \"auto\" or \"cpu\""));
  EXPECT_THAT([&] { resolve("cuda:1", 1); },
              testing::ThrowsMessage<dedpo::Error>(
                  "asked for cuda:1, but this machine has one CUDA device, cuda:0; use \"auto\" "
                  "or \"cpu\""));
  EXPECT_THAT([&] { resolve("cuda:2", 2); },
              testing::ThrowsMessage<dedpo::Error>(HasSubstr("has 2 CUDA devices, cuda:0 to cuda:1")));
}

TEST(Device, ADataParallelRankOnCudaGetsTheGpuOfItsLocalRank) {
  const c10::Device cpu(c10::kCPU);
  auto device = [](const char* text, int local_rank, int cuda_devices) {
    return dedpo::data_parallel_device(dedpo::parse_device(text), local_rank, cuda_devices);
  };
  EXPECT_EQ(device("cuda", 1, 2), c10::Device(c10::kCUDA, 1));
  EXPECT_EQ(device("auto", 3, 8), c10::Device(c10::kCUDA, 3));
  EXPECT_EQ(device("auto", 1, 0), cpu);
  EXPECT_EQ(device("cpu", 1, 2), cpu);
  // One visible GPU: the launcher gave this rank its own (CUDA_VISIBLE_DEVICES per rank).
  EXPECT_EQ(device("cuda", 5, 1), c10::Device(c10::kCUDA, 0));
  EXPECT_THAT([&] { device("cuda:1", 1, 2); },
              testing::ThrowsMessage<dedpo::Error>(
                  "\"cuda:1\" puts every rank on one GPU, but a data-parallel run puts each rank on "
                  "its own, cuda:LOCAL_RANK; use \"cuda\" or \"auto\""));
  EXPECT_THAT([&] { device("cuda", 2, 2); },
              testing::ThrowsMessage<dedpo::Error>(
                  "the rank with LOCAL_RANK 2 has no GPU of its own (cuda:LOCAL_RANK): this machine "
                  "has 2 CUDA devices, cuda:0 to cuda:1; start at most one rank per GPU on a node"));
  EXPECT_THAT([&] { device("cuda", 0, 0); },
              testing::ThrowsMessage<dedpo::Error>(HasSubstr("asked for cuda:0, but this machine has no CUDA device")));
}

TEST_F(SettingsTest, DeviceIsResolvedWhenTheExperimentLoads) {
  const int cuda = dedpo::available_cuda_devices();
  EXPECT_EQ(load_with("run.device", "\"cpu\"").run.device, c10::Device(c10::kCPU));
  EXPECT_EQ(load_with("run.device", "\"auto\"").run.device,
            cuda > 0 ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU));
  EXPECT_THAT(error_with("run.device", "\"tpu\""),
              HasSubstr("exp.toml [run] (--set run.device=\"tpu\"): option 'device': expected \"auto\", \"cpu\""));
  EXPECT_THAT(error_with("run.device", "\"cuda:" + std::to_string(cuda) + "\""),
              HasSubstr("exp.toml [run] (--set run.device=\"cuda:" + std::to_string(cuda) + "\"): option 'device': asked for cuda:" + std::to_string(cuda)));
  if (cuda == 0) {
    EXPECT_THAT(error_with("run.device", "\"cuda\""), HasSubstr("no CUDA device"));
  }
}

TEST_F(SettingsTest, LauncherTableIsTypedAndKeptOutOfTheRunsConfig) {
  write_file(dir / "slurm.toml", std::string(kMinimal) + R"([launcher]
partition = "gpu"
time = "04:00:00"
processes = 16
nodes = 2
gpus_per_task = 1
cpus_per_task = 8
memory = "480G"
sbatch = """
--account=lab

  --exclusive
"""
setup = "module load cuda/13.0"
)");
  const dedpo::Experiment experiment = load("slurm.toml");
  const dedpo::LauncherSettings& launcher = experiment.launcher;
  EXPECT_EQ(launcher.partition, "gpu");
  EXPECT_EQ(launcher.time, "04:00:00");
  EXPECT_EQ(launcher.processes, 16);
  EXPECT_EQ(launcher.nodes, 2);
  EXPECT_EQ(launcher.gpus_per_task, 1);
  EXPECT_EQ(launcher.cpus_per_task, 8);
  EXPECT_EQ(launcher.memory, "480G");
  EXPECT_EQ(launcher.sbatch_options, (std::vector<std::string>{"--account=lab", "--exclusive"}));
  EXPECT_EQ(launcher.setup, "module load cuda/13.0");
  // Where a grid runs is no input of its runs: changing it makes no run stale.
  EXPECT_EQ(experiment.resolved_toml, load("exp.toml").resolved_toml);
}

TEST_F(SettingsTest, BadLauncherValuesAreNamedWithWhatWasExpected) {
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"processes", "0", "expected a positive integer, got 0"},
      {"nodes", "-1", "expected a positive integer, got -1"},
      {"gpus_per_task", "-1", "expected a non-negative integer, got -1"},
      // One process drives one GPU: more per task would sit idle.
      {"gpus_per_task", "2",
       "expected 0 or 1 (a dedpo process uses one GPU), got 2; for 2 GPUs per run use "
       "processes = 2 with gpus_per_task = 1"},
      {"cpus_per_task", "-4", "expected a non-negative integer, got -4"},
      {"time", "\"1:00\\n2:00\"", "expected one line, got a line break"},
      {"sbatch", "\"--qos=high\\nexclusive\"",
       "expected one sbatch option per line (\"--account=lab\"), got 'exclusive'"},
  };
  for (const auto& [key, value, message] : cases) {
    EXPECT_EQ(error_with("launcher." + key, value),
              path("exp.toml") + " [launcher] (--set launcher." + key + "=" + value + "): option '" +
                  key + "': " + message);
  }
  // The processes of a run are spread evenly over its nodes.
  const std::string uneven = error_of("exp.toml", {{"launcher.nodes", "2"}, {"launcher.processes", "3"}});
  EXPECT_THAT(uneven, testing::HasSubstr("[launcher]")) << uneven;
  EXPECT_THAT(uneven, testing::HasSubstr("option 'processes': expected a multiple of nodes = 2 (as "
                                         "many processes on every node), got 3"))
      << uneven;
  const std::string wrong_type = error_with("launcher.gpus_per_task", "\"8\"");
  EXPECT_THAT(wrong_type, testing::HasSubstr("[launcher]")) << wrong_type;
  EXPECT_THAT(wrong_type, testing::HasSubstr("option 'gpus_per_task' expects an integer")) << wrong_type;
}
