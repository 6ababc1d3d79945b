"""scripts/parquet_to_manifest.py on small Pick-a-Pic v2 shards and HPDv2 annotation files made
here, then the manifest trained on by `dedpo run` through the pairs_manifest plugin.

Environment (set by tests/python/CMakeLists.txt): DEDPO_EXECUTABLE, DEDPO_MAKE_TINY_SD."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "parquet_to_manifest.py"


def image_bytes(seed, kind="PNG", size=(24, 16)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=kind)
    return out.getvalue()


def pickapic_row(ranking_id, caption, jpg_0, jpg_1, label_0=1.0, has_label=True,
                 are_different=True):
    return {"are_different": are_different, "best_image_uid": "", "caption": caption,
            "has_label": has_label, "image_0_uid": f"uid-{ranking_id}-0",
            "image_1_uid": f"uid-{ranking_id}-1", "jpg_0": jpg_0, "jpg_1": jpg_1,
            "label_0": label_0, "label_1": None if label_0 is None else 1.0 - label_0,
            "model_0": "sd", "model_1": "sd", "ranking_id": ranking_id, "user_id": 7}


PICKAPIC_SCHEMA = pa.schema([
    ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
    ("has_label", pa.bool_()), ("image_0_uid", pa.string()), ("image_1_uid", pa.string()),
    ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()),
    ("label_1", pa.float64()), ("model_0", pa.string()), ("model_1", pa.string()),
    ("ranking_id", pa.int64()), ("user_id", pa.int64())])


def write_shard(path, rows, row_group_size=2, drop=()):
    table = pa.Table.from_pylist(rows, schema=PICKAPIC_SCHEMA)
    pq.write_table(table.drop_columns(list(drop)), path, row_group_size=row_group_size)


def convert(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def manifest(folder):
    return [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]


class PickAPic(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.temp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.temp.name)
        cls.shared = image_bytes(1, "JPEG")  # in two rankings
        cls.images = {name: image_bytes(seed, kind) for name, seed, kind in
                      [("a", 2, "PNG"), ("b", 3, "JPEG"), ("c", 4, "PNG"), ("d", 5, "JPEG"),
                       ("e", 6, "PNG")]}
        im = cls.images
        shards = cls.dir / "shards"
        shards.mkdir()
        # Shard 0: two row groups of two rows. Shard 1: a tie, an unlabelled pair and two
        # identical images (left out).
        write_shard(shards / "train-00000.parquet", [
            pickapic_row(10, "a red fox", cls.shared, im["a"], 1.0),
            pickapic_row(11, "a red fox", im["b"], cls.shared, 0.0),
            pickapic_row(12, "an owl", im["c"], im["d"], 1.0),
            pickapic_row(13, "an owl", im["d"], im["e"], 0.0)])
        write_shard(shards / "train-00001.parquet", [
            pickapic_row(20, "a lighthouse", im["a"], im["e"], 0.5),
            pickapic_row(21, "a lighthouse", im["b"], im["c"], 0.5, has_label=False),
            pickapic_row(22, "a lighthouse", im["c"], im["c"], 1.0, are_different=False)])
        cls.out = cls.dir / "out"
        cls.first = convert("pickapic", cls.out, shards, "--batch-rows", 1)

    @classmethod
    def tearDownClass(cls):
        cls.temp.cleanup()

    def test_manifest_holds_every_pair_with_label_ids_and_ties(self):
        self.assertEqual(self.first.returncode, 0, self.first.stderr)
        lines = manifest(self.out)
        self.assertEqual([line["id"] for line in lines], [10, 11, 12, 13, 20, 21])
        self.assertEqual([line["label"] for line in lines], [1, 0, 1, 0, 0.5, None])
        self.assertEqual(lines[0]["prompt"], "a red fox")
        self.assertEqual(lines[0]["image_a_id"], "uid-10-0")
        self.assertEqual(lines[0]["image_b_id"], "uid-10-1")
        self.assertTrue(lines[4]["source"].endswith("train-00001.parquet: row 0"))
        self.assertIn("6 pairs (1 ties)", self.first.stdout)
        self.assertIn("1 rows with two identical images left out", self.first.stdout)

    def test_each_image_is_written_once_under_its_content_digest(self):
        lines = manifest(self.out)
        self.assertEqual(lines[0]["image_a"], lines[1]["image_b"])  # the shared image
        originals = {10: (self.shared, self.images["a"]), 13: (self.images["d"], self.images["e"])}
        for line in lines:
            if line["id"] not in originals:
                continue
            for side, data in zip(("image_a", "image_b"), originals[line["id"]]):
                digest = hashlib.sha256(data).hexdigest()
                self.assertIn(digest, line[side])
                self.assertEqual((self.out / line[side]).read_bytes(), data)
        stored = [p for p in (self.out / "images").rglob("*") if p.is_file()]
        self.assertEqual(len(stored), 6)  # shared + a..e
        self.assertEqual({p.suffix for p in stored}, {".jpg", ".png"})
        self.assertIn("images: 6 written, 6 already present", self.first.stdout)

    def test_a_rerun_writes_no_image_again_and_the_same_manifest(self):
        before = (self.out / "pairs.jsonl").read_text()
        again = convert("pickapic", self.out, self.dir / "shards")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("images: 0 written, 12 already present", again.stdout)
        self.assertEqual((self.out / "pairs.jsonl").read_text(), before)

    def test_dedpo_trains_on_the_manifest(self):
        tiny_sd = self.dir / "tiny-sd"
        subprocess.run([os.environ["DEDPO_MAKE_TINY_SD"], str(tiny_sd)], check=True,
                       capture_output=True, timeout=120)
        experiment = self.dir / "pickapic.toml"
        experiment.write_text(f"""
[run]
name = "pickapic"
output = "{self.dir / 'runs'}"
threads = 1
[backbone]
plugin = "sd15"
path = "{tiny_sd}"
resolution = 16
[data]
plugin = "pairs_manifest"
manifest = "{self.out / 'pairs.jsonl'}"
[loss]
plugin = "dpo"
[train]
steps = 1
batch_size = 2
""")
        run = subprocess.run([os.environ["DEDPO_EXECUTABLE"], "run", str(experiment),
                              "--no-progress"], capture_output=True, text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        results = json.loads((self.dir / "runs" / "pickapic-1" / "results.json").read_text())
        self.assertEqual(results["data"]["pairs"], 6)
        self.assertEqual(results["data"]["labelled"], 5)  # the unlabelled one has no label
        self.assertEqual(results["data"]["labelled_ties_kept"], 1)
        self.assertEqual(results["data"]["images_encoded"], 6)  # each distinct image once


class PickAPicBadInput(unittest.TestCase):
    def setUp(self):
        self.temp = tempfile.TemporaryDirectory()
        self.dir = Path(self.temp.name)
        self.good = [pickapic_row(1, "a cat", image_bytes(1), image_bytes(2)),
                     pickapic_row(2, "a dog", image_bytes(3), image_bytes(4))]

    def tearDown(self):
        self.temp.cleanup()

    def test_a_missing_column_names_the_shard_and_column(self):
        shard = self.dir / "s.parquet"
        write_shard(shard, self.good, drop=["label_0"])
        result = convert("pickapic", self.dir / "out", shard)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{shard}: missing column(s) label_0 of the Pick-a-Pic v2 layout",
                      result.stderr)
        self.assertFalse((self.dir / "out" / "pairs.jsonl").exists())

    def test_an_undecodable_image_names_shard_row_and_column(self):
        shard = self.dir / "s.parquet"
        write_shard(shard, self.good + [pickapic_row(3, "a cow", image_bytes(5), b"not an image")])
        result = convert("pickapic", self.dir / "out", shard)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{shard}: row 2: column 'jpg_1': cannot decode image", result.stderr)

    def test_a_label_out_of_range_names_shard_row_and_column(self):
        shard = self.dir / "s.parquet"
        write_shard(shard, [pickapic_row(3, "a cow", image_bytes(5), image_bytes(6), 2.0)])
        result = convert("pickapic", self.dir / "out", shard)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{shard}: row 0: column 'label_0': expected 1, 0 or 0.5 where has_label "
                      "is true, got 2.0", result.stderr)

    def test_skip_counts_bad_rows_and_keeps_the_good_ones(self):
        shard = self.dir / "s.parquet"
        webp = image_bytes(9, "WEBP")
        write_shard(shard, self.good + [
            pickapic_row(3, "a cow", image_bytes(5), b"junk"),
            pickapic_row(4, "a hen", image_bytes(6), image_bytes(7), None),
            pickapic_row(5, "", image_bytes(6), image_bytes(7)),
            pickapic_row(6, "a pig", webp, image_bytes(7))])
        result = convert("pickapic", self.dir / "out", shard, "--on-error", "skip")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([line["id"] for line in manifest(self.dir / "out")], [1, 2])
        self.assertIn("skipped_bad_image: 2; skipped_bad_label: 1; skipped_missing_value: 1",
                      result.stdout)
        self.assertIn("row 5: column 'jpg_0': image format WEBP is not one pairs_manifest reads",
                      result.stderr)
        self.assertIn("row 4: column 'caption': missing value", result.stderr)


def train_entry(prompt, files, preference, **extra):
    return {"human_preference": preference, "prompt": prompt, "file_path": files, **extra}


class HPDv2(unittest.TestCase):
    def setUp(self):
        self.temp = tempfile.TemporaryDirectory()
        self.dir = Path(self.temp.name)
        self.images = self.dir / "HPD" / "train"
        self.images.mkdir(parents=True)
        self.names = [f"{n:08d}.jpg" for n in range(5)]
        for n, name in enumerate(self.names):
            (self.images / name).write_bytes(image_bytes(n, "JPEG"))

    def tearDown(self):
        self.temp.cleanup()

    def convert(self, annotations, entries):
        annotations.write_text(json.dumps(entries, indent=1))
        return convert("hpdv2", self.dir / "out", "--annotations", annotations,
                       "--images", self.images)

    def test_train_pairs_and_test_rankings_become_pairs_with_ties(self):
        names = self.names
        result = self.convert(self.dir / "HPD" / "train.json", [
            train_entry("a fox", names[0:2], [1, 0], user_hash="u1"),
            train_entry("an owl", names[2:4], [0, 1])])
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = manifest(self.dir / "out")
        self.assertEqual([(l["id"], l["label"]) for l in lines], [("train:0", 1), ("train:1", 0)])
        self.assertEqual(lines[0]["image_a"], "../HPD/train/00000000.jpg")
        self.assertEqual(lines[0]["user_hash"], "u1")

        result = self.convert(self.dir / "HPD" / "test.json", [
            {"prompt": "a lamp", "image_path": names[2:5], "rank": [1, 2, 2], "raw_annotations": []}])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([(l["id"], l["label"]) for l in manifest(self.dir / "out")],
                         [("test:0:0-1", 1), ("test:0:0-2", 1), ("test:0:1-2", 0.5)])

    def test_a_missing_image_or_bad_preference_names_the_entry_and_key(self):
        train = self.dir / "HPD" / "train.json"
        result = self.convert(train, [train_entry("a fox", [self.names[0], "gone.jpg"], [1, 0])])
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{train}: entry 0: key 'file_path': image {self.images / 'gone.jpg'}",
                      result.stderr)
        result = self.convert(train, [train_entry("a fox", self.names[0:2], [1, 1])])
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{train}: entry 0: key 'human_preference': expected [1, 0] or [0, 1], "
                      "got [1, 1]", result.stderr)


if __name__ == "__main__":
    unittest.main()
