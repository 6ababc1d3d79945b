// The collectives on a real c10d Gloo process group: two ranks as two threads of this process,
// meeting at a TCPStore on a free local port; NCCL on one rank where there is a GPU.
#include <chrono>
#include <functional>
#include <thread>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dedpo/error.hpp"
#include "dedpo/host/distributed.hpp"
#include "dedpo/host/settings.hpp"

namespace {

constexpr std::chrono::milliseconds kTimeout{20000};

// Runs `body(collectives)` on ranks 0 and 1 at once and rethrows the first failure.
void on_two_ranks(const std::function<void(dedpo::Collectives&)>& body) {
  const int port = dedpo::free_local_port();
  std::exception_ptr failures[2];
  auto rank = [&](int r) {
    try {
      dedpo::WorldPlacement world{r, 2, r, "127.0.0.1", port, "test"};
      dedpo::Collectives collectives(world, kTimeout);
      body(collectives);
    } catch (...) {
      failures[r] = std::current_exception();
    }
  };
  std::thread second(rank, 1);
  rank(0);
  second.join();
  for (const std::exception_ptr& failure : failures) {
    if (failure) std::rethrow_exception(failure);
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

TEST(Collectives, AveragesGradientsAndZeroFillsOnesARankLacks) {
  at::Tensor grads[2][3];
  on_two_ranks([&](dedpo::Collectives& collectives) {
    const int r = collectives.rank();
    at::Tensor a = at::zeros({4});
    at::Tensor b = at::zeros({2, 2}, at::kDouble);  // another dtype: another bucket
    at::Tensor unused = at::zeros({2});             // no gradient on any rank
    a.mutable_grad() = at::arange(4, at::kFloat) * (r + 1);
    if (r == 1) b.mutable_grad() = at::full({2, 2}, 4.0, at::kDouble);
    collectives.average_gradients({a, b, unused});
    grads[r][0] = a.grad();
    grads[r][1] = b.grad();
    grads[r][2] = unused.grad();
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(at::allclose(grads[r][0], at::arange(4, at::kFloat) * 1.5)) << "rank " << r;
    EXPECT_TRUE(at::equal(grads[r][1], at::full({2, 2}, 2.0, at::kDouble))) << "rank " << r;
    EXPECT_FALSE(grads[r][2].defined()) << "rank " << r;
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
  collectives.average_gradients({a, unused});
  EXPECT_EQ(a.grad().device(), gpu);
  EXPECT_TRUE(at::equal(a.grad().cpu(), at::arange(4, at::kFloat)));
  EXPECT_FALSE(unused.grad().defined());
  EXPECT_EQ(collectives.sum({1.5, -2.0}), (std::vector<double>{1.5, -2.0}));
}

}  // namespace
