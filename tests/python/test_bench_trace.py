"""dedpo_bench_dpo_step --trace and bench/trace_summary.py: a profiled step of a tiny random UNet
is written as a Chrome trace with each op's input shapes, and the summary's self times are its ops'
times minus those of the ops they called, in total and per input shapes (checked on a hand-made
trace).

Environment (set by tests/python/CMakeLists.txt where the benchmarks are built): DEDPO_BENCH_DPO_STEP."""

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

BENCH = os.environ.get("DEDPO_BENCH_DPO_STEP")  # unset where the benchmarks are not built
SUMMARY = Path(__file__).resolve().parents[2] / "bench" / "trace_summary.py"

# A two-level SD-layout UNet with one cross-attention block per level: seconds on one thread.
TINY_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [32, 64],
    "center_input_sample": False,
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 8,
    "out_channels": 4,
    "sample_size": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}


def summarise(*args):
    return subprocess.run([sys.executable, str(SUMMARY), *args], capture_output=True, text=True)


class TraceSummaryTest(unittest.TestCase):
    def test_self_time_subtracts_the_ops_called(self):
        # Thread 1: outer [0, 10] calls inner [1, 4] and mid [5, 9], mid calls inner [6, 7].
        # Thread 2: a lone inner [0, 2]. Times in µs.
        events = [
            {"ph": "X", "tid": 1, "name": "outer", "ts": 0, "dur": 10000},
            {"ph": "X", "tid": 1, "name": "inner", "ts": 1000, "dur": 3000},
            {"ph": "X", "tid": 1, "name": "mid", "ts": 5000, "dur": 4000},
            {"ph": "X", "tid": 1, "name": "inner", "ts": 6000, "dur": 1000},
            {"ph": "X", "tid": 2, "name": "inner", "ts": 0, "dur": 2000},
            {"ph": "i", "tid": 1, "name": "marker", "ts": 3000},
        ]
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.json"
            trace.write_text(json.dumps(events))
            result = summarise(str(trace))
            self.assertEqual(result.returncode, 0, result.stderr)
            rows = {line.split()[-1]: line.split()[:4] for line in result.stdout.splitlines()[2:]}
            self.assertIn("12.0 ms of self time over 2 thread(s)", result.stdout)
            self.assertEqual(rows["outer"][0], "3.00")  # 10 - 3 - 4
            self.assertEqual(rows["inner"][0], "6.00")  # 3 + 1 + 2
            self.assertEqual(rows["inner"][2], "3")
            self.assertEqual(rows["mid"][0], "3.00")  # 4 - 1
            self.assertEqual(rows["mid"][3], "4.00")
            self.assertNotIn("marker", rows)

            callers = summarise(str(trace), "--callers", "inner")
            self.assertEqual(callers.returncode, 0, callers.stderr)
            lines = callers.stdout.splitlines()
            self.assertEqual(lines[0], "inner: 6.00 ms in 3 calls")
            self.assertIn("3.00 ms      1  outer", lines[1])
            self.assertIn("2.00 ms      1  (top level)", lines[2])
            self.assertIn("1.00 ms      1  mid < outer", lines[3])

    def test_shapes_split_an_ops_time_by_its_inputs(self):
        # mm [0, 10] on 4x8 · 8x2 calls mm [2, 5] on 2x3 · 3x1 (an op nested in itself); a second
        # 4x8 · 8x2 mm [20, 24]; relu [12, 13] has no shapes to split by.
        def mm(ts, dur, a, b):
            return {"ph": "X", "tid": 1, "name": "mm", "ts": ts, "dur": dur, "args": {"Input Dims": [a, b, [], []]}}
        events = [
            mm(0, 10000, [4, 8], [8, 2]),
            mm(2000, 3000, [2, 3], [3, 1]),
            {"ph": "X", "tid": 1, "name": "relu", "ts": 12000, "dur": 1000},
            mm(20000, 4000, [4, 8], [8, 2]),
        ]
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.json"
            trace.write_text(json.dumps({"traceEvents": events}))
            result = summarise(str(trace), "--shapes", "mm")
            self.assertEqual(result.returncode, 0, result.stderr)
            lines = result.stdout.splitlines()
            self.assertEqual(lines[0], "mm: 14.00 ms of self time in 3 calls")  # 7 + 3 + 4
            rows = {line.split(None, 3)[3]: line.split()[:3] for line in lines[2:]}
            self.assertEqual(rows["4x8 8x2"], ["11.00", "2", "14.00"])  # (10 - 3) + 4 self, 10 + 4 inclusive
            self.assertEqual(rows["2x3 3x1"], ["3.00", "1", "0.00"])  # inside another mm: not inclusive again
            no_shapes = summarise(str(trace), "--shapes", "relu")
            self.assertNotEqual(no_shapes.returncode, 0)
            self.assertIn("no input shapes for 'relu'", no_shapes.stderr)
            missing = summarise(str(trace), "--shapes", "conv")
            self.assertNotEqual(missing.returncode, 0)
            self.assertIn("no op named 'conv'", missing.stderr)
            both = summarise(str(trace), "--shapes", "mm", "--callers", "mm")
            self.assertNotEqual(both.returncode, 0)
            self.assertIn("give one", both.stderr)

    def test_bad_input_is_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            missing = summarise(str(Path(tmp) / "none.json"))
            self.assertNotEqual(missing.returncode, 0)
            self.assertIn("none.json", missing.stderr)
            empty = Path(tmp) / "empty.json"
            empty.write_text("[]")
            result = summarise(str(empty))
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("no complete", result.stderr)


@unittest.skipUnless(BENCH, "DEDPO_BENCH_DPO_STEP is not set: a build without the benchmarks (DEDPO_BUILD_BENCH=OFF)")
class BenchTraceTest(unittest.TestCase):
    def test_a_profiled_step_holds_the_whole_training_step(self):
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "unet.json"
            config.write_text(json.dumps(TINY_UNET))
            trace = Path(tmp) / "step.json"
            run = subprocess.run([BENCH, str(config), "--latent", "8", "--steps", "1", "--warmup", "0",
                                  "--threads", "1", "--trace", str(trace)], capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, run.stderr)
            self.assertIn(f"trace             {trace} (one more step, not timed)", run.stdout)
            events = json.loads(trace.read_text())["traceEvents"]
            names = {e["name"] for e in events if e.get("ph") == "X"}
            # The forward's convolutions, the backward's, the norm of the gradients and AdamW.
            for op in ("aten::convolution", "aten::convolution_backward", "dedpo::gradient_norm", "aten::_fused_adamw_"):
                self.assertIn(op, names)
            summary = summarise(str(trace), "--top", "5")
            self.assertEqual(summary.returncode, 0, summary.stderr)
            self.assertEqual(len(summary.stdout.splitlines()), 2 + 5)
            # conv_in's input shapes: 2 latents of 4 channels at 8×8, its [32, 4, 3, 3] weight and bias.
            conv_dims = [e["args"]["Input Dims"][:3] for e in events if e["name"] == "aten::convolution"]
            self.assertIn([[2, 4, 8, 8], [32, 4, 3, 3], [32]], conv_dims)
            shapes = summarise(str(trace), "--shapes", "aten::convolution")
            self.assertEqual(shapes.returncode, 0, shapes.stderr)
            self.assertIn("2x4x8x8 32x4x3x3 32", shapes.stdout)

    def test_an_unwritable_trace_fails_before_the_steps(self):
        run = subprocess.run([BENCH, "unused.json", "--trace", "/nonexistent/folder/step.json"],
                             capture_output=True, text=True)
        self.assertEqual(run.returncode, 1)
        self.assertIn("--trace: cannot write /nonexistent/folder/step.json", run.stderr)


if __name__ == "__main__":
    unittest.main()
