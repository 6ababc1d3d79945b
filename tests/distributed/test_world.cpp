// The launcher's environment read into a WorldPlacement: torchrun's and Slurm's variables, and
// the errors for missing, malformed or inconsistent values.
#include <map>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dedpo/error.hpp"
#include "dedpo/host/distributed.hpp"

namespace {

using Variables = std::map<std::string, std::string>;

dedpo::WorldPlacement placement(const Variables& variables) {
  return dedpo::read_world_placement([&](const std::string& name) -> std::optional<std::string> {
    auto it = variables.find(name);
    if (it == variables.end()) return std::nullopt;
    return it->second;
  });
}

std::string error_of(const Variables& variables) {
  try {
    placement(variables);
  } catch (const dedpo::Error& error) {
    return error.what();
  }
  return "no error";
}

const Variables kTorchrun = {{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                             {"MASTER_ADDR", "node1"}, {"MASTER_PORT", "29511"}};

TEST(WorldPlacement, NoLauncherIsOneProcessAlone) {
  const dedpo::WorldPlacement world = placement({});
  EXPECT_EQ(world.launcher, "single");
  EXPECT_EQ(world.rank, 0);
  EXPECT_EQ(world.world_size, 1);
  EXPECT_FALSE(world.distributed());
}

TEST(WorldPlacement, ReadsTorchrunVariables) {
  const dedpo::WorldPlacement world = placement(kTorchrun);
  EXPECT_EQ(world.launcher, "torchrun");
  EXPECT_EQ(world.rank, 3);
  EXPECT_EQ(world.world_size, 8);
  EXPECT_EQ(world.local_rank, 1);
  EXPECT_EQ(world.master_addr, "node1");
  EXPECT_EQ(world.master_port, 29511);
  EXPECT_TRUE(world.distributed());
}

TEST(WorldPlacement, TorchrunVariablesWinOverSlurms) {
  Variables both = kTorchrun;
  both["SLURM_PROCID"] = "0";
  both["SLURM_NTASKS"] = "1";
  EXPECT_EQ(placement(both).rank, 3);
}

// The error of torchrun's variables with `name` set to `value` (unset when empty).
std::string torchrun_error_with(const std::string& name, const std::string& value) {
  Variables variables = kTorchrun;
  if (value.empty()) {
    variables.erase(name);
  } else {
    variables[name] = value;
  }
  return error_of(variables);
}

TEST(WorldPlacement, NamesTheMissingOrBadVariable) {
  EXPECT_THAT(torchrun_error_with("MASTER_PORT", ""), testing::HasSubstr("MASTER_PORT is not set"));
  EXPECT_THAT(torchrun_error_with("WORLD_SIZE", "8x"),
              testing::HasSubstr("WORLD_SIZE=\"8x\": expected an integer"));
  EXPECT_THAT(torchrun_error_with("RANK", "8"),
              testing::HasSubstr("RANK=8: expected a rank in [0, WORLD_SIZE) = [0, 8)"));
  EXPECT_THAT(torchrun_error_with("LOCAL_RANK", "-1"),
              testing::HasSubstr("LOCAL_RANK=-1: expected a local rank in [0, WORLD_SIZE)"));
  EXPECT_THAT(torchrun_error_with("MASTER_PORT", "70000"),
              testing::HasSubstr("MASTER_PORT=70000: expected a TCP port"));
  EXPECT_THAT(torchrun_error_with("WORLD_SIZE", "0"), testing::HasSubstr("WORLD_SIZE=0: expected at least 1"));
}

TEST(WorldPlacement, ReadsSlurmVariablesWithTheFirstNodeAsMaster) {
  const dedpo::WorldPlacement world =
      placement({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "5"},
                 {"SLURM_JOB_NODELIST", "gpu[07-09,12],cpu1"}});
  EXPECT_EQ(world.launcher, "slurm");
  EXPECT_EQ(world.rank, 5);
  EXPECT_EQ(world.world_size, 16);
  EXPECT_EQ(world.local_rank, 5);
  EXPECT_EQ(world.master_addr, "gpu07");
  EXPECT_EQ(world.master_port, dedpo::kDefaultMasterPort);
}

TEST(WorldPlacement, SlurmTakesMasterAddressAndPortWhenGiven) {
  const dedpo::WorldPlacement world =
      placement({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"},
                 {"SLURM_JOB_NODELIST", "a,b"}, {"MASTER_ADDR", "10.0.0.2"}, {"MASTER_PORT", "4000"}});
  EXPECT_EQ(world.master_addr, "10.0.0.2");
  EXPECT_EQ(world.master_port, 4000);
}

TEST(WorldPlacement, OneSlurmTaskNeedsNoNodeList) {
  const dedpo::WorldPlacement world =
      placement({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"SLURM_LOCALID", "0"}});
  EXPECT_FALSE(world.distributed());
  EXPECT_THAT(error_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}}),
              testing::HasSubstr("SLURM_JOB_NODELIST is not set"));
}

TEST(FirstSlurmHost, TakesTheFirstHostOfTheList) {
  EXPECT_EQ(dedpo::first_slurm_host("node1"), "node1");
  EXPECT_EQ(dedpo::first_slurm_host("node1,node2"), "node1");
  EXPECT_EQ(dedpo::first_slurm_host("gpu-a[003-010]"), "gpu-a003");
  EXPECT_EQ(dedpo::first_slurm_host("x1,gpu[1-2]"), "x1");
  EXPECT_EQ(dedpo::first_slurm_host("gpu[4,7-9]"), "gpu4");
}

TEST(FirstSlurmHost, RejectsMalformedLists) {
  EXPECT_THROW(dedpo::first_slurm_host(""), dedpo::Error);
  EXPECT_THROW(dedpo::first_slurm_host("gpu[01-02"), dedpo::Error);
  EXPECT_THROW(dedpo::first_slurm_host("gpu[a-b]"), dedpo::Error);
}

}  // namespace
