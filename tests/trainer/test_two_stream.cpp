// Two-stream batches ([train] batches = "two_stream"): the streams (their pools, sizes and
// epochs, their state in a checkpoint), the losses that refuse them, and a two-stream DeDPO run
// with lambda = "auto" and gradient accumulation that resumes bit for bit.
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "test_support.hpp"
#include "train/sampler.hpp"
#include "train/seeds.hpp"
#include "trainer_test_util.hpp"

namespace {

namespace fs = std::filesystem;
using namespace dedpo;
using namespace dedpo::trainer_test;
using ::testing::HasSubstr;

// 40 pairs, every 4th labelled (10 labelled pairs).
at::Tensor every_fourth_labelled() { return at::arange(40, at::kLong).remainder(4).eq(0); }

TrainSettings two_stream(std::int64_t batch_size, std::int64_t labelled_batch_size) {
  TrainSettings settings;
  settings.batch_size = batch_size;
  settings.batches = BatchComposition::two_stream;
  settings.labelled_batch_size = labelled_batch_size;
  return settings;
}

std::vector<std::int64_t> values(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return {c.data_ptr<std::int64_t>(), c.data_ptr<std::int64_t>() + c.numel()};
}

std::multiset<std::int64_t> as_multiset(const std::vector<std::int64_t>& v) {
  return {v.begin(), v.end()};
}

}  // namespace

TEST(TwoStream, LabelledStreamDrawsLabelledPairsAndTheRestAllPairsEachInItsOwnEpochs) {
  const at::Tensor labelled = every_fourth_labelled();
  // 2 labelled + 8 from all pairs: 5 batches are one epoch of either pool.
  PairBatches batches(labelled, PairPool::all, two_stream(10, 2), 7);
  EXPECT_EQ(batches.labelled_stream_size(), 2);
  std::multiset<std::int64_t> expected_labelled, expected_all;
  for (std::int64_t i = 0; i < 40; ++i) {
    expected_all.insert(i);
    if (i % 4 == 0) expected_labelled.insert(i);
  }
  std::vector<std::int64_t> first_epoch_order;
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<std::int64_t> from_labelled, from_all;
    for (int b = 0; b < 5; ++b) {
      std::vector<std::int64_t> index = values(batches.next());
      ASSERT_EQ(index.size(), 10u);
      from_labelled.insert(from_labelled.end(), index.begin(), index.begin() + 2);
      from_all.insert(from_all.end(), index.begin() + 2, index.end());
    }
    // Each epoch of a stream holds each pair of its pool exactly once.
    EXPECT_EQ(as_multiset(from_labelled), expected_labelled) << "epoch " << epoch;
    EXPECT_EQ(as_multiset(from_all), expected_all) << "epoch " << epoch;
    if (epoch == 0) first_epoch_order = from_all;
    if (epoch == 1) EXPECT_NE(from_all, first_epoch_order) << "a new epoch is a new order";
  }
}

TEST(TwoStream, PooledBatchesDrawFromTheLossPoolInTheOrderTheyAlwaysHad) {
  const at::Tensor labelled = every_fourth_labelled();
  TrainSettings pooled;
  pooled.batch_size = 8;
  PairBatches batches(labelled, PairPool::labelled, pooled, 7);
  EXPECT_EQ(batches.labelled_stream_size(), 0);
  // The one sampler of before, seeded as before: pooled runs are unchanged bit for bit.
  Sampler before(at::nonzero(labelled).flatten(), derive_seed(7, RandomStream::data_order));
  for (int b = 0; b < 4; ++b) {
    std::vector<std::int64_t> index = values(batches.next());
    EXPECT_EQ(index, values(before.next(8)));
    for (std::int64_t i : index) EXPECT_EQ(i % 4, 0) << "pair " << i << " is not labelled";
  }
}

TEST(TwoStream, BothStreamsContinueFromACheckpoint) {
  const at::Tensor labelled = every_fourth_labelled();
  PairBatches batches(labelled, PairPool::all, two_stream(7, 3), 11);
  for (int b = 0; b < 3; ++b) batches.next();
  torch::serialize::OutputArchive archive;
  batches.save(archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  std::vector<std::vector<std::int64_t>> expected;
  for (int b = 0; b < 6; ++b) expected.push_back(values(batches.next()));  // across epochs

  PairBatches restored(labelled, PairPool::all, two_stream(7, 3), 999);  // another seed
  torch::serialize::InputArchive input;
  std::istringstream in(bytes.str());
  input.load_from(in);
  restored.load(input);
  for (int b = 0; b < 6; ++b) EXPECT_EQ(values(restored.next()), expected[b]) << "batch " << b;

  // A pooled run's checkpoint has no labelled stream to continue.
  TrainSettings pooled;
  pooled.batch_size = 7;
  PairBatches pooled_batches(labelled, PairPool::all, pooled, 11);
  torch::serialize::OutputArchive pooled_archive;
  pooled_batches.save(pooled_archive);
  std::ostringstream pooled_bytes;
  pooled_archive.save_to(pooled_bytes);
  torch::serialize::InputArchive pooled_input;
  std::istringstream pooled_in(pooled_bytes.str());
  pooled_input.load_from(pooled_in);
  EXPECT_THAT([&] { restored.load(pooled_input); },
              ::testing::ThrowsMessage<Error>(HasSubstr("no labelled-stream sampler")));
}

TEST(TwoStream, NeedsLabelledPairsAndALossThatDrawsFromAllPairs) {
  const at::Tensor none = at::zeros({40}, at::kBool);
  EXPECT_THAT([&] { (void)PairBatches(none, PairPool::all, two_stream(8, 4), 1); },
              ::testing::ThrowsMessage<Error>(HasSubstr("but no pair is labelled")));
  EXPECT_THAT(
      [&] { (void)PairBatches(every_fourth_labelled(), PairPool::labelled, two_stream(8, 4), 1); },
              ::testing::ThrowsMessage<Error>(HasSubstr("PairPool::all")));
}

TEST(TwoStream, LossesThatCannotUseThemAreRefusedWhenTheExperimentLoads) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  const Override batches{"train.batches", "\"two_stream\""};
  for (const char* loss : {"dpo", "cdpo", "rdpo", "ipo", "hinge", "sft", "test_dpo"}) {
    EXPECT_THAT([&] { experiment(registry, temp.path(), {batches, {"loss.plugin", loss}}); },
                ::testing::ThrowsMessage<Error>(HasSubstr(
                    std::string("test.toml: [train] batches = \"two_stream\": loss '") + loss +
                    "' does not take two-stream batches (it trains on the labelled pairs only, "
                    "so there is no all-pairs term for a second stream); use batches = "
                    "\"pooled\"")))
        << loss;
  }
  // A loss that draws from all pairs but does not say how to weigh two streams.
  EXPECT_THAT([&] { experiment(registry, temp.path(), {batches, {"loss.pool", "\"all\""}}); },
              ::testing::ThrowsMessage<Error>(
                  HasSubstr("loss 'test_dpo' does not take two-stream batches (it does not say "
                            "how to weigh a labelled and an all-pairs stream")));
  // dedpo and naive_ssl_dpo take them; labelled_batch_size 0 is half the batch, rounded up.
  for (const char* loss : {"dedpo", "naive_ssl_dpo"}) {
    Experiment e = experiment(registry, temp.path(),
                              {batches, {"loss.plugin", loss}, {"train.batch_size", "7"}});
    EXPECT_EQ(e.train.batches, BatchComposition::two_stream);
    EXPECT_EQ(e.train.labelled_batch_size, 4) << loss;
  }
}

TEST(TwoStream, DedpoWithAutoLambdaAndAccumulationResumesBitIdentically) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  std::vector<Override> overrides = {
      {"loss.plugin", "\"dedpo\""},          {"loss.beta", "10.0"},
      {"loss.lambda", "\"auto\""},           {"loss.lambda_warmup", "4"},
      {"loss.lambda_folds", "2"},            {"loss.lambda_moments", "\"central\""},
      {"annotator.plugin", "\"test_annotator\""},
      {"train.labelled_fraction", "0.5"},   {"train.grad_accum", "2"},
      {"train.checkpoint_every", "5"},      {"train.log_every", "1"},
      {"train.batches", "\"two_stream\""},  {"train.labelled_batch_size", "3"}};
  Experiment e = experiment(registry, temp.path(), overrides);
  ASSERT_TRUE(run_experiment(e, registry, quiet(temp / "full")).finished);
  RunControl stop = quiet(temp / "cut");
  stop.stop_after_steps = 7;  // checkpoint at 5: steps 6 and 7 are lost, as if killed
  EXPECT_FALSE(run_experiment(e, registry, stop).finished);
  ASSERT_TRUE(resume_run(temp / "cut", registry, quiet({})).finished);
  expect_same_weights(temp / "full", temp / "cut");
  const auto full = jsonl(temp / "full" / kMetricsFile);
  EXPECT_EQ(jsonl(temp / "cut" / kMetricsFile), full);
  // Every micro-batch held its 3 labelled-stream pairs (and perhaps labelled pairs among the 5
  // from all pairs); lambda = auto left its warm-up.
  bool estimated = false;
  for (const auto& line : full) {
    if (!line.contains("labelled_pairs")) continue;
    EXPECT_GE(line.at("labelled_pairs").get<double>(), 3.0) << line.dump();
    estimated = estimated || line.at("lambda").get<double>() != 1.0;
  }
  EXPECT_TRUE(estimated) << "lambda = auto never left lambda = 1";

  // The same run with pooled batches trains differently.
  overrides.resize(overrides.size() - 2);
  Experiment pooled = experiment(registry, temp.path(), overrides);
  ASSERT_TRUE(run_experiment(pooled, registry, quiet(temp / "pooled")).finished);
  EXPECT_FALSE(same_weights(temp / "full", temp / "pooled"));
}
