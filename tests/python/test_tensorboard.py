"""[log] tensorboard = true, read back with TensorBoard's own reader (EventAccumulator): on the
toy world its scalars are metrics.jsonl's numbers, also after a run is killed and resumed (a
second event file whose session start drops what the killed session logged after its
checkpoint); on a tiny SD1.5 run its images are the samples each evaluation saved.

Environment (set by tests/python/CMakeLists.txt): DEDPO_EXECUTABLE, DEDPO_MAKE_TINY_SD,
DEDPO_MAKE_TINY_CLIP."""

import json
import os
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

DEDPO = os.environ["DEDPO_EXECUTABLE"]
MAKE_TINY_SD = os.environ["DEDPO_MAKE_TINY_SD"]
MAKE_TINY_CLIP = os.environ["DEDPO_MAKE_TINY_CLIP"]


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


def sd_experiment(folder):
    """Two steps of DPO on a tiny SD1.5 model and 4 random image pairs, evaluated after each step
    by the pickscore metric (a tiny random scorer) on 2 prompts, reference included."""
    for tool, target in ((MAKE_TINY_SD, "sd"), (MAKE_TINY_CLIP, "clip")):
        subprocess.run([tool, str(folder / target)], check=True, capture_output=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        for side in "ab":
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{side}{i}.png")
        lines.append(json.dumps({"prompt": "a cat", "image_a": f"a{i}.png", "image_b": f"b{i}.png", "label": i % 2}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "photo.txt").write_text("a cat\nthe sea\n")
    file = folder / "sd.toml"
    file.write_text(f"""
[run]
name = "sd"
output = "{folder / 'runs'}"
threads = 1
[backbone]
plugin = "sd15"
path = "{folder / 'sd'}"
resolution = 16
sample_steps = 2
guidance_scale = 1.0
[data]
plugin = "pairs_manifest"
manifest = "{folder / 'pairs.jsonl'}"
[loss]
plugin = "dpo"
[train]
steps = 2
batch_size = 4
labelled_fraction = 1.0
lr = 0.01
[eval]
every = 1
[[metrics]]
plugin = "pickscore"
path = "{folder / 'clip'}"
prompts = "{folder / 'photo.txt'}"
reference = true
[log]
tensorboard = true
""")
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

    def test_images_are_the_samples_each_evaluation_saved(self):
        result = dedpo("run", sd_experiment(self.dir), "--no-progress")
        self.assertEqual(result.returncode, 0, result.stderr)
        run_dir = self.dir / "runs" / "sd-1"
        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        # Each evaluation (after step 1, and the final one at step 2): 2 prompts, model and reference.
        evaluations = {1: "step-000001", 2: "final"}
        tags = events.Tags()["images"]
        self.assertEqual(len(tags), 4, tags)
        for step, folder in evaluations.items():
            saved = [json.loads(line)["file"]
                     for line in (run_dir / "samples" / folder / "samples.jsonl").read_text().splitlines()]
            self.assertEqual(sorted(f"samples/{file[:-4]}" for file in saved), sorted(tags))
            for file in saved:
                image = [event for event in events.Images(f"samples/{file[:-4]}") if event.step == step]
                self.assertEqual(len(image), 1, (file, step))
                self.assertEqual((image[0].width, image[0].height), (16, 16))
                self.assertEqual(image[0].encoded_image_string,
                                 (run_dir / "samples" / folder / file).read_bytes(), (file, step))
        # Training moved the model: the two evaluations' images of the trained model differ.
        model = "samples/photo/model/p000-i0"
        first, last = (event.encoded_image_string for event in events.Images(model))
        self.assertNotEqual(first, last)

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
