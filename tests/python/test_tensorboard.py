"""[log] tensorboard = true on the toy world, read back with TensorBoard's own reader
(EventAccumulator): its scalars are metrics.jsonl's numbers, also after a run is killed and
resumed (a second event file whose session start drops what the killed session logged after its
checkpoint).

Environment (set by tests/python/CMakeLists.txt): DEDPO_EXECUTABLE."""

import json
import os
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

DEDPO = os.environ["DEDPO_EXECUTABLE"]


def toy_experiment(folder, name, steps, checkpoint_every, eval_every=5,
                   log="[log]\ntensorboard = true\n"):
    file = folder / f"{name}.toml"
    file.write_text(f"""
[run]
name = "{name}"
output = "{folder / 'runs'}"
threads = 1
[backbone]
plugin = "toy"
[data]
plugin = "toy_pairs"
n_pairs = 64
[loss]
plugin = "dpo"
[train]
batch_size = 16
log_every = 1
checkpoint_every = {checkpoint_every}
steps = {steps}
[eval]
every = {eval_every}
[[metrics]]
plugin = "toy_reward"
{log}""")
    return file


def dedpo(*args):
    return subprocess.run([DEDPO, *map(str, args)], capture_output=True, text=True, timeout=300)


def logged_scalars(run_dir):
    """tag -> [(step, value)] as metrics.jsonl holds them: every number and boolean but the step,
    as the float32 TensorBoard stores."""
    scalars = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for tag, value in record.items():
            if tag != "step" and isinstance(value, (int, float)):  # bool is an int; null is not
                scalars.setdefault(tag, []).append((record["step"], float(np.float32(value))))
    return scalars


def tensorboard_scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def event_files(run_dir):
    return sorted(p.name for p in (run_dir / "tensorboard").iterdir())


class TensorBoard(unittest.TestCase):
    def setUp(self):
        self.temp = tempfile.TemporaryDirectory()
        self.dir = Path(self.temp.name)

    def tearDown(self):
        self.temp.cleanup()

    def test_scalars_are_the_numbers_of_metrics_jsonl(self):
        result = dedpo("run", toy_experiment(self.dir, "toy", steps=12, checkpoint_every=4),
                       "--no-progress")
        self.assertEqual(result.returncode, 0, result.stderr)
        run_dir = self.dir / "runs" / "toy-1"
        expected = logged_scalars(run_dir)
        for tag in ("loss", "lr", "grad_norm", "implicit_accuracy", "skipped", "eval/win_rate"):
            self.assertIn(tag, expected)
        self.assertEqual(tensorboard_scalars(run_dir), expected)
        files = event_files(run_dir)
        self.assertEqual(len(files), 1)
        self.assertRegex(files[0], r"^events\.out\.tfevents\.\d{10}\.")

    def test_a_killed_and_resumed_run_shows_each_step_once(self):
        experiment = toy_experiment(self.dir, "cut", steps=60, checkpoint_every=10, eval_every=20)
        run_dir = self.dir / "runs" / "cut-1"
        process = subprocess.Popen([DEDPO, "run", str(experiment), "--no-progress"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 120
        # Killed once it has logged past its first checkpoint.
        while process.poll() is None and time.monotonic() < deadline:
            if metrics.exists() and metrics.read_text().count("\n") >= 25:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.assertFalse((run_dir / "results.json").exists(), "the run ended before it was killed")
        killed_steps = metrics.read_text().count("\n")

        result = dedpo("run", "--resume", run_dir, "--no-progress")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(event_files(run_dir)), 2)
        expected = logged_scalars(run_dir)
        self.assertEqual(len(expected["loss"]), 60)
        observed = tensorboard_scalars(run_dir)
        self.assertEqual(observed, expected, f"killed after {killed_steps} logged steps")

    def test_a_run_without_log_table_writes_no_event_file(self):
        result = dedpo("run", toy_experiment(self.dir, "plain", steps=2, checkpoint_every=0, log=""),
                       "--no-progress")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse((self.dir / "runs" / "plain-1" / "tensorboard").exists())

    def test_a_bad_log_value_is_named(self):
        experiment = toy_experiment(self.dir, "bad", steps=2, checkpoint_every=0,
                                    log="[log]\ntensorboard = 1\n")
        result = dedpo("validate", experiment)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("[log]: option 'tensorboard' expects a boolean, got integer 1", result.stderr)


if __name__ == "__main__":
    unittest.main()
