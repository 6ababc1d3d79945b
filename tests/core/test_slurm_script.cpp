// The Slurm launcher's batch script (grid/slurm_launcher.cpp) without a cluster: its #SBATCH
// lines for a run of one and of several processes, and what the script runs, with a stand-in
// `srun` on the PATH.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "grid/launchers.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using dedpo::test::read_file;
using dedpo::test::run_shell;
using dedpo::test::TempDir;
using dedpo::test::write_file;
using testing::HasSubstr;
using testing::Not;

namespace {

class SlurmBatchScript : public testing::Test {
 protected:
  // The script of a one-run array whose run is the command `program 'a b'`, run as array task 0
  // of job `job_id` with `environment` (e.g. "MASTER_PORT=4000 "); returns its run's stdout.txt.
  std::string run_script(const dedpo::LauncherSettings& settings, const std::string& job_id,
                         const std::string& environment = "") {
    const fs::path run_dir = dir / "run";
    fs::remove_all(run_dir);
    fs::create_directories(run_dir);
    write_file(dir / "array-1.sh",
               dedpo::slurm_batch_script(dir.path(), settings, {{"run", run_dir, {"echo", "a b"}}}));
    // srun as a job step would start it: its arguments, then the command.
    write_file(dir / "bin" / "srun",
               "#!/bin/bash\necho \"srun $* (MASTER_PORT=$MASTER_PORT)\"\n");
    const auto result = run_shell("chmod +x '" + (dir / "bin" / "srun").string() + "' && " +
                                  environment + "SLURM_ARRAY_TASK_ID=0 SLURM_JOB_ID=" + job_id +
                                  " PATH='" + (dir / "bin").string() + "':$PATH bash '" +
                                  (dir / "array-1.sh").string() + "'");
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return read_file(run_dir / "stdout.txt");
  }

  TempDir dir;
};

}  // namespace

TEST_F(SlurmBatchScript, ARunOfOneProcessIsTheBatchStepItself) {
  const dedpo::LauncherSettings settings;
  const std::string script = dedpo::slurm_batch_script(dir.path(), settings, {});
  EXPECT_THAT(script, HasSubstr("#SBATCH --nodes=1\n#SBATCH --ntasks=1\n#SBATCH --ntasks-per-node=1\n"));
  EXPECT_THAT(script, Not(HasSubstr("srun")));
  EXPECT_THAT(script, Not(HasSubstr("MASTER_PORT")));
  EXPECT_EQ(run_script(settings, "12345"), "a b\n");
}

TEST_F(SlurmBatchScript, ARunOfSeveralProcessesIsAJobStepWithAPortOfItsOwn) {
  dedpo::LauncherSettings settings;
  settings.processes = 8;
  settings.nodes = 2;
  settings.gpus_per_task = 1;
  settings.cpus_per_task = 6;
  const std::string script = dedpo::slurm_batch_script(dir.path(), settings, {});
  EXPECT_THAT(script, HasSubstr("#SBATCH --nodes=2\n#SBATCH --ntasks=8\n#SBATCH --ntasks-per-node=4\n"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --gpus-per-task=1\n#SBATCH --cpus-per-task=6\n"));
  // Each array task listens on a port of its own, unless the environment gives one.
  EXPECT_EQ(run_script(settings, "12345"),
            "srun --label --gpus-per-task=1 --cpus-per-task=6 echo a b (MASTER_PORT=22345)\n");
  EXPECT_EQ(run_script(settings, "12346"),
            "srun --label --gpus-per-task=1 --cpus-per-task=6 echo a b (MASTER_PORT=22346)\n");
  EXPECT_EQ(run_script(settings, "12347", "MASTER_PORT=4000 "),
            "srun --label --gpus-per-task=1 --cpus-per-task=6 echo a b (MASTER_PORT=4000)\n");
}
