// The collectives on a real c10d Gloo process group: two ranks as two threads of this process,
// meeting at a TCPStore on a free local port; NCCL on one rank where there is a GPU.
#include <array>
#include <chrono>
#include <functional>
#include <future>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dedpo/error.hpp"
#include "dedpo/host/distributed.hpp"
#include "dedpo/host/gradient_reducer.hpp"
#include "dedpo/host/settings.hpp"

namespace {

constexpr std::chrono::milliseconds kTimeout{20000};

// Runs `body(collectives)` on ranks 0 and 1 at once; each rank's failure, if any.
std::array<std::exception_ptr, 2> run_two_ranks(
    std::chrono::milliseconds timeout, const std::function<void(dedpo::Collectives&)>& body) {
  const int port = dedpo::free_local_port();
  std::array<std::exception_ptr, 2> failures;
  auto rank = [&](int r) {
    try {
      dedpo::WorldPlacement world{r, 2, r, "127.0.0.1", port, "test"};
      dedpo::Collectives collectives(world, timeout);
      body(collectives);
    } catch (...) {
      failures[r] = std::current_exception();
    }
  };
  std::thread second(rank, 1);
  rank(0);
  second.join();
  return failures;
}

// Runs `body(collectives)` on ranks 0 and 1 at once and rethrows the first failure.
void on_two_ranks(const std::function<void(dedpo::Collectives&)>& body) {
  for (const std::exception_ptr& failure : run_two_ranks(kTimeout, body)) {
    if (failure) std::rethrow_exception(failure);
  }
}

// The message of a rank's failure; "" when it did not fail.
std::string message(const std::exception_ptr& failure) {
  if (!failure) return "";
  try {
    std::rethrow_exception(failure);
  } catch (const std::exception& error) {
    return error.what();
  }
}

TEST(Collectives, BroadcastGivesEveryRankTheFirstRanksValues) {
  at::Tensor received[2];
  on_two_ranks([&](dedpo::Collectives& collectives) {
    at::Tensor weights = at::full({3, 2}, double(collectives.rank() + 1));
    collectives.broadcast_from_first({weights});
    received[collectives.rank()] = weights;
  });
  EXPECT_TRUE(at::equal(received[1], at::full({3, 2}, 1.0, at::kDouble)));
  EXPECT_TRUE(at::equal(received[0], at::full({3, 2}, 1.0, at::kDouble)));
}

// Gradients set outside any backward pass (as the masters of bfloat16 weights get theirs): every
// bucket starts in finish().
TEST(GradientReducer, AveragesAfterTheBackwardPassAndZeroFillsOnesARankLacks) {
  at::Tensor grads[2][3];
  on_two_ranks([&](dedpo::Collectives& collectives) {
    const int r = collectives.rank();
    at::Tensor a = at::zeros({4});
    at::Tensor b = at::zeros({2, 2});    // another bucket (16-byte buckets)
    at::Tensor unused = at::zeros({2});  // no gradient on any rank
    dedpo::GradientReducer reducer(collectives, {a, b, unused}, 4 * sizeof(float));
    a.mutable_grad() = at::arange(4, at::kFloat) * (r + 1);
    if (r == 1) b.mutable_grad() = at::full({2, 2}, 4.0);
    reducer.finish();
    EXPECT_EQ(reducer.buckets(), 3u);
    EXPECT_EQ(reducer.overlapped_buckets(), 0u);
    grads[r][0] = a.grad();
    grads[r][1] = b.grad();
    grads[r][2] = unused.grad();
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(at::allclose(grads[r][0], at::arange(4, at::kFloat) * 1.5)) << "rank " << r;
    EXPECT_TRUE(at::equal(grads[r][1], at::full({2, 2}, 2.0))) << "rank " << r;
    EXPECT_FALSE(grads[r][2].defined()) << "rank " << r;
  }
}

// The reducer on a chain of layers, two micro-batches of which only the second is armed: its
// averages equal, bit for bit, those of a reducer over copies of the gradients taken after the
// backward pass (a parameter only rank 1 uses and one nobody uses included), and with a bucket per
// layer the layers' buckets start before the backward pass ends.
TEST(GradientReducer, AveragesAsAfterTheBackwardPassWhileTheBackwardPassRuns) {
  constexpr int kLayers = 6, kCount = kLayers + 2;
  at::Tensor reduced[2][kCount], reference[2][kCount];
  std::size_t overlapped[2] = {}, buckets[2] = {};
  on_two_ranks([&](dedpo::Collectives& collectives) {
    const int r = collectives.rank();
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(1);  // the same weights
    // First the vectors (the last bucket: buckets go in reverse parameter order), then the layers.
    std::vector<at::Tensor> parameters;
    parameters.push_back(at::randn({8}, generator).requires_grad_());  // used by nobody
    parameters.push_back(at::randn({8}, generator).requires_grad_());  // used by rank 1 only
    for (int k = 0; k < kLayers; ++k) parameters.push_back(at::randn({8, 8}, generator).requires_grad_());
    dedpo::GradientReducer reducer(collectives, parameters, 8 * 8 * sizeof(float));
    const at::Tensor input = at::randn({4, 8}, generator) * (r + 1);
    for (int micro = 0; micro < 2; ++micro) {
      at::Tensor x = input + micro;
      if (r == 1) x = x + parameters[1];
      for (int k = 0; k < kLayers; ++k) x = at::tanh(at::matmul(x, parameters[2 + k]));
      if (micro == 1) reducer.arm();
      (x.pow(2).sum() / 2).backward();
    }
    std::vector<at::Tensor> copies;
    for (const at::Tensor& p : parameters) {
      at::Tensor copy = p.detach().clone();
      if (p.grad().defined()) copy.mutable_grad() = p.grad().clone();
      copies.push_back(copy);
    }
    dedpo::GradientReducer after(collectives, copies, 8 * 8 * sizeof(float));
    reducer.finish();
    after.finish();
    overlapped[r] = reducer.overlapped_buckets();
    buckets[r] = reducer.buckets();
    for (int k = 0; k < kCount; ++k) {
      reduced[r][k] = parameters[k].grad();
      reference[r][k] = copies[k].grad();
    }
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_FALSE(reduced[r][0].defined()) << "rank " << r;
    for (int k = 1; k < kCount; ++k) {
      ASSERT_TRUE(reduced[r][k].defined()) << "rank " << r << " parameter " << k;
      EXPECT_TRUE(at::equal(reduced[r][k], reference[r][k])) << "rank " << r << " parameter " << k;
      EXPECT_TRUE(at::equal(reduced[r][k], reduced[0][k])) << "rank " << r << " parameter " << k;
    }
    EXPECT_EQ(buckets[r], static_cast<std::size_t>(kLayers + 1));  // the vectors share one
    // Every layer's bucket started within the backward pass; the vectors' never fills (nobody
    // has the unused one's gradient) and starts in finish().
    EXPECT_EQ(overlapped[r], static_cast<std::size_t>(kLayers)) << "rank " << r;
  }
}

TEST(Collectives, SumsScalarsOverRanks) {
  std::vector<double> sums[2];
  on_two_ranks([&](dedpo::Collectives& collectives) {
    const double r = collectives.rank();
    sums[collectives.rank()] = collectives.sum({r + 1.0, 10.0 * r});
  });
  EXPECT_EQ(sums[0], (std::vector<double>{3.0, 10.0}));
  EXPECT_EQ(sums[1], sums[0]);
}

TEST(Collectives, ARankThatNeverComesEndsTheRendezvousWithAnError) {
  dedpo::WorldPlacement world{0, 2, 0, "127.0.0.1", dedpo::free_local_port(), "test"};
  try {
    dedpo::Collectives alone(world, std::chrono::milliseconds(1500));
    FAIL() << "expected the rendezvous to time out";
  } catch (const dedpo::Error& error) {
    EXPECT_THAT(error.what(), testing::HasSubstr("rank 0 of 2 could not meet the others at 127.0.0.1:"));
  }
}

// Rank 1 hangs in step 3: it never comes to the all-reduce rank 0 waits in, and leaves only once
// rank 0 has failed. Rank 0's collective times out and its Error names rank 1 and where it was.
TEST(Collectives, ARankThatHangsIsNamedByTheOthersWhenTheCollectiveTimesOut) {
  std::promise<void> first_failed;
  std::shared_future<void> first_failed_future = first_failed.get_future().share();
  const auto started = std::chrono::steady_clock::now();
  const auto one_second = std::chrono::milliseconds(1000);
  const auto failures = run_two_ranks(one_second, [&](dedpo::Collectives& collectives) {
    collectives.sum({1.0});  // collective #1, which both reach
    collectives.begin_step(3);
    if (collectives.rank() == 1) {
      first_failed_future.wait();  // hangs until rank 0 has failed
      return;
    }
    try {
      collectives.sum({1.0});
    } catch (...) {
      first_failed.set_value();
      throw;
    }
  });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_EQ(message(failures[1]), "");
  const std::string error = message(failures[0]);
  EXPECT_THAT(error, testing::HasSubstr("collective #2 (all-reduce, step 3) failed on rank 0 of 2: "
                                        "rank 1 of 2 did not answer within 1 s (it died or hangs; "
                                        "it last began step 3 after collective #1)"));
  // The timeout, then the wait for the others' answers (the shorter of the timeout and 5 s).
  EXPECT_LT(seconds, 10.0) << error;
}

// Rank 0, the TCPStore's host, leaves while rank 1 waits for its names: rank 1 says so.
TEST(Collectives, TheStoreGoneWithTheFirstRankNamesTheFirstRank) {
  const auto failures = run_two_ranks(kTimeout, [&](dedpo::Collectives& collectives) {
    collectives.sum({1.0});  // both are past the rendezvous
    if (collectives.rank() == 1) collectives.sorted_union({"loss"});
  });
  EXPECT_EQ(message(failures[0]), "");
  EXPECT_THAT(message(failures[1]),
              testing::AllOf(testing::HasSubstr("collective #2 (union of names) failed on rank 1 of "
                                                "2: the TCPStore on rank 0 (127.0.0.1:"),
                             testing::HasSubstr("): rank 0 failed; ")));
}

TEST(Collectives, ADeviceWithoutAProcessGroupIsNamed) {
  dedpo::WorldPlacement world{0, 1, 0, "127.0.0.1", dedpo::free_local_port(), "test"};
  EXPECT_THAT([&] { dedpo::Collectives group(world, kTimeout, c10::Device(c10::kMeta)); },
              testing::ThrowsMessage<dedpo::Error>(
                  "data-parallel runs have no process group for meta (Gloo for the CPU, NCCL for CUDA)"));
}

// NCCL on one rank, on the first GPU: runs wherever LibTorch sees one (scripts/gpu_check.sh's
// all-reduce check runs the same group on a lent GPU).
TEST(Collectives, NcclOnOneRankReducesCudaTensors) {
  if (dedpo::available_cuda_devices() == 0) GTEST_SKIP() << "no CUDA device: NCCL cannot run here";
  const c10::Device gpu(c10::kCUDA, 0);
  dedpo::WorldPlacement world{0, 1, 0, "127.0.0.1", dedpo::free_local_port(), "test"};
  dedpo::Collectives collectives(world, kTimeout, gpu);
  EXPECT_EQ(collectives.device(), gpu);
  const at::TensorOptions on_gpu = at::TensorOptions().device(gpu);
  at::Tensor weights = at::full({3}, 2.0, on_gpu);
  collectives.broadcast_from_first({weights});
  EXPECT_TRUE(at::equal(weights.cpu(), at::full({3}, 2.0)));
  at::Tensor a = at::zeros({4}, on_gpu);
  at::Tensor unused = at::zeros({2}, on_gpu);
  a.mutable_grad() = at::arange(4, on_gpu.dtype(at::kFloat));
  dedpo::GradientReducer reducer(collectives, {a, unused}, dedpo::kGradientBucketBytes);
  reducer.finish();
  EXPECT_EQ(a.grad().device(), gpu);
  EXPECT_TRUE(at::equal(a.grad().cpu(), at::arange(4, at::kFloat)));
  EXPECT_FALSE(unused.grad().defined());
  EXPECT_EQ(collectives.sum({1.5, -2.0}), (std::vector<double>{1.5, -2.0}));
}

}  // namespace
