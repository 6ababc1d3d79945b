#!/usr/bin/env python3
"""Turns published preference data sets into dedpo's pairs_manifest layout (docs/data.md).

  parquet_to_manifest.py pickapic OUT SHARD_OR_FOLDER... [--on-error fail|skip] [--batch-rows N]
  parquet_to_manifest.py hpdv2 OUT --annotations train.json --images HPD/train [--on-error ...]

pickapic: Pick-a-Pic v2 parquet shards (yuvalkirstain/pickapic_v2: caption, jpg_0, jpg_1, label_0,
has_label, are_different, ranking_id, image_0_uid, image_1_uid). Shards are read one record
batch at a time, so memory stays bounded by a batch whatever the shard size. Each image is
written once, named by its content (OUT/images/<2 hex>/<sha256>.<ext>): an image shared by many
rankings, or met again by a rerun, is not written again. Rows whose two images are the same
(are_different = false) are left out and counted.

hpdv2: HPDv2 (ymhao/HPDv2) is published as train.json / test.json beside train.tar.gz /
test.tar.gz of image files, not as parquet. Give the annotation file and the folder the archive
was extracted to; the images are referenced where they lie (they already are files, written
once). train.json pairs carry human_preference [1, 0] or [0, 1]; test.json ranks several images
per prompt, and every two of them make a pair (equal ranks a tie, label 0.5).

OUT/pairs.jsonl gets one line per pair: id, prompt, image_a, image_b, label (1, 0, 0.5 or null for
no human label), the ids of both images and where the pair came from. It is written to a
temporary name and renamed at the end, so an interrupted conversion never leaves half a manifest.

Bad input names the file, the row (or entry) and the column (or key). A missing column stops the
conversion; a bad value (missing prompt or image, undecodable image, label out of range) stops it
with --on-error fail (the default) or is skipped and counted with --on-error skip.
"""

import argparse
import collections
import hashlib
import io
import json
import os
import sys
from pathlib import Path

from PIL import Image

# PIL's format name -> file extension, for the formats pairs_manifest decodes.
READABLE_FORMATS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif", "TGA": "tga",
                    "PPM": "ppm"}

PICKAPIC_COLUMNS = ["ranking_id", "caption", "jpg_0", "jpg_1", "label_0", "has_label",
                    "are_different", "image_0_uid", "image_1_uid"]

# Messages printed per kind of skipped problem; the rest are only counted.
SHOWN_PER_KIND = 10


class Fatal(Exception):
    """A problem that stops the whole conversion."""


class BadValue(Exception):
    """A problem with one row: stops the conversion or skips the row (--on-error)."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class Problems:
    """Applies --on-error to bad rows and counts the skipped ones by kind."""

    def __init__(self, on_error):
        self.on_error = on_error
        self.counts = collections.Counter()

    def handle(self, problem):
        if self.on_error == "fail":
            raise Fatal(str(problem))
        self.counts[problem.kind] += 1
        if self.counts[problem.kind] <= SHOWN_PER_KIND:
            print(f"skipped: {problem}", file=sys.stderr)


def image_extension(data, where):
    """The file extension of encoded image bytes; BadValue when PIL cannot read them or
    pairs_manifest could not."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            kind = image.format
    except Exception as error:  # PIL raises many types for undecodable bytes
        raise BadValue("bad_image", f"{where}: cannot decode image ({error})") from None
    if kind not in READABLE_FORMATS:
        raise BadValue("bad_image", f"{where}: image format {kind} is not one pairs_manifest "
                                    f"reads ({', '.join(READABLE_FORMATS)})")
    return READABLE_FORMATS[kind]


class ImageStore:
    """OUT/images, content-addressed: each distinct image is written once."""

    def __init__(self, out):
        self.out = out
        self.written = 0
        self.present = 0

    def path_for(self, data, where):
        """The path relative to OUT that the bytes get, once checked decodable."""
        extension = image_extension(data, where)
        digest = hashlib.sha256(data).hexdigest()
        return Path("images") / digest[:2] / f"{digest}.{extension}"

    def write(self, relative, data):
        target = self.out / relative
        if target.exists():
            self.present += 1
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name and renamed: a killed run never leaves a partial image
        # that a rerun would take as present.
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
        self.written += 1


def parquet_shards(inputs):
    """The parquet files named, folders expanded to their *.parquet files in name order."""
    shards = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(path.rglob("*.parquet"))
            if not found:
                raise Fatal(f"{path}: folder holds no .parquet file")
            shards.extend(found)
        elif path.is_file():
            shards.append(path)
        else:
            raise Fatal(f"{path}: no such file or folder")
    return shards


def required(value, where, column):
    if value is None or value == "" or value == b"":
        raise BadValue("missing_value", f"{where}: column '{column}': missing value")
    return value


def pickapic_label(row, where):
    """label_0 as the manifest's label: 1 image 0 preferred, 0 image 1, 0.5 tie, None unlabelled."""
    if not row["has_label"]:
        return None
    label = row["label_0"]
    if label not in (0.0, 0.5, 1.0):  # also rejects None and NaN
        raise BadValue("bad_label", f"{where}: column 'label_0': expected 1, 0 or 0.5 where "
                                    f"has_label is true, got {label}")
    return int(label) if label != 0.5 else 0.5


def pickapic_pair(row, where, store):
    ranking_id = required(row["ranking_id"], where, "ranking_id")
    prompt = required(row["caption"], where, "caption")
    label = pickapic_label(row, where)
    checked = []
    for column in ("jpg_0", "jpg_1"):
        data = required(row[column], where, column)
        checked.append((store.path_for(data, f"{where}: column '{column}'"), data))
    # Written only once both are known good: a skipped row leaves no image behind.
    for relative, data in checked:
        store.write(relative, data)
    image_a, image_b = (relative.as_posix() for relative, _ in checked)
    return {"id": ranking_id, "prompt": prompt, "image_a": image_a, "image_b": image_b,
            "label": label, "image_a_id": row["image_0_uid"], "image_b_id": row["image_1_uid"],
            "source": where}


def convert_pickapic(args, manifest, problems, counts):
    """Writes the shards' pairs; returns what happened to their images."""
    import pyarrow.parquet as pq

    store = ImageStore(args.out)
    for shard in parquet_shards(args.inputs):
        try:
            # pyarrow's default pre-buffering reads ahead across row groups: peak memory then grows
            # with the shard (650 MB for a 465 MB shard). Without it, and with buffered reads, it
            # stays flat: 210 MB for shards of 155 MB and 465 MB alike (90 MB is Python itself).
            parquet = pq.ParquetFile(shard, pre_buffer=False, buffer_size=1 << 20)
        except Exception as error:
            raise Fatal(f"{shard}: cannot read as parquet ({error})") from None
        missing = [c for c in PICKAPIC_COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise Fatal(f"{shard}: missing column(s) {', '.join(missing)} of the Pick-a-Pic v2 "
                        f"layout (the shard has {', '.join(parquet.schema_arrow.names)})")
        row_index = 0
        for batch in parquet.iter_batches(batch_size=args.batch_rows, columns=PICKAPIC_COLUMNS):
            for row in batch.to_pylist():
                where = f"{shard}: row {row_index}"
                row_index += 1
                if not row["are_different"]:
                    counts["identical_images"] += 1
                    continue
                try:
                    pair = pickapic_pair(row, where, store)
                except BadValue as problem:
                    problems.handle(problem)
                    continue
                manifest.write(json.dumps(pair, ensure_ascii=False) + "\n")
                counts["pairs"] += 1
                counts["ties"] += pair["label"] == 0.5
    return f"images: {store.written} written, {store.present} already present"


def json_array_items(path, chunk_chars=1 << 20):
    """The items of a JSON array file, one at a time (train.json is over 100 MB)."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as file:
        buffer = file.read(chunk_chars).lstrip()
        if not buffer.startswith("["):
            raise Fatal(f"{path}: expected a JSON array")
        buffer = buffer[1:]
        while True:
            buffer = buffer.lstrip().lstrip(",").lstrip()
            if buffer.startswith("]"):
                return
            try:
                item, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError:
                more = file.read(chunk_chars)
                if not more:
                    raise Fatal(f"{path}: malformed or truncated JSON array") from None
                buffer += more
                continue
            yield item
            buffer = buffer[end:]


def hpdv2_key(entry, where, key):
    if not isinstance(entry, dict) or key not in entry:
        raise BadValue("missing_value", f"{where}: missing key '{key}'")
    return entry[key]


class HpdImages:
    """HPDv2's extracted image folder: images are referenced in place, after checking them."""

    def __init__(self, folder, out):
        self.folder = folder
        self.out = out
        self.checked = 0

    def reference(self, name, where):
        path = self.folder / name
        self.checked += 1
        try:
            data = path.read_bytes()
        except OSError as error:
            raise BadValue("missing_image", f"{where}: image {path}: {error.strerror}") from None
        image_extension(data, f"{where}: image {path}")
        return os.path.relpath(path, self.out)


def hpdv2_pairs(entry, where, images):
    """The pairs of one annotation entry: train.json's one pair, or test.json's ranked images
    taken two at a time."""
    prompt = hpdv2_key(entry, where, "prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadValue("missing_value", f"{where}: key 'prompt': expected a non-empty string")
    if "file_path" in entry:
        files = hpdv2_key(entry, where, "file_path")
        preference = hpdv2_key(entry, where, "human_preference")
        if not isinstance(files, list) or len(files) != 2:
            raise BadValue("missing_value", f"{where}: key 'file_path': expected two image paths")
        if preference not in ([1, 0], [0, 1]):
            raise BadValue("bad_label", f"{where}: key 'human_preference': expected [1, 0] or "
                                        f"[0, 1], got {preference}")
        paths = [images.reference(f, f"{where}: key 'file_path'") for f in files]
        yield "", paths, files, 1 if preference == [1, 0] else 0
        return
    files = hpdv2_key(entry, where, "image_path")
    ranks = hpdv2_key(entry, where, "rank")
    if not isinstance(files, list) or not isinstance(ranks, list) or len(files) != len(ranks):
        raise BadValue("missing_value", f"{where}: keys 'image_path' and 'rank': expected lists "
                                        "of the same length")
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ranks):
        raise BadValue("bad_label", f"{where}: key 'rank': expected numbers, got {ranks}")
    paths = [images.reference(f, f"{where}: key 'image_path'") for f in files]
    for i in range(len(files)):
        for j in range(i + 1, len(files)):
            label = 1 if ranks[i] < ranks[j] else 0 if ranks[i] > ranks[j] else 0.5
            yield f":{i}-{j}", [paths[i], paths[j]], [files[i], files[j]], label


def convert_hpdv2(args, manifest, problems, counts):
    """Writes the annotation file's pairs; returns what happened to their images."""
    annotations = Path(args.annotations)
    folder = Path(args.images)
    if not folder.is_dir():
        raise Fatal(f"{folder}: --images must be the folder HPDv2's image archive was extracted to")
    images = HpdImages(folder.resolve(), args.out.resolve())
    for index, entry in enumerate(json_array_items(annotations)):
        where = f"{annotations}: entry {index}"
        try:
            pairs = list(hpdv2_pairs(entry, where, images))
        except BadValue as problem:
            problems.handle(problem)
            continue
        for suffix, paths, files, label in pairs:
            pair = {"id": f"{annotations.stem}:{index}{suffix}", "prompt": entry["prompt"],
                    "image_a": paths[0], "image_b": paths[1], "label": label,
                    "image_a_id": files[0], "image_b_id": files[1], "source": where}
            if "user_hash" in entry:
                pair["user_hash"] = entry["user_hash"]
            manifest.write(json.dumps(pair, ensure_ascii=False) + "\n")
            counts["pairs"] += 1
            counts["ties"] += label == 0.5
    return f"images: {images.checked} references checked, used where they lie"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sets = parser.add_subparsers(dest="dataset", required=True)
    pickapic = sets.add_parser("pickapic", help="Pick-a-Pic v2 parquet shards")
    pickapic.add_argument("out", type=Path, help="output folder (pairs.jsonl, images/)")
    pickapic.add_argument("inputs", nargs="+", help="parquet shards, or folders of them")
    pickapic.add_argument("--batch-rows", type=int, default=64,
                          help="rows read at a time (bounds memory; default 64)")
    hpdv2 = sets.add_parser("hpdv2", help="HPDv2 train.json / test.json and its image folder")
    hpdv2.add_argument("out", type=Path, help="output folder (pairs.jsonl)")
    hpdv2.add_argument("--annotations", required=True, help="train.json or test.json")
    hpdv2.add_argument("--images", required=True,
                       help="folder the matching train.tar.gz / test.tar.gz was extracted to")
    for sub in (pickapic, hpdv2):
        sub.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                         help="a bad row stops the conversion (fail, default) or is skipped and "
                              "counted (skip)")
    args = parser.parse_args(argv)
    if args.dataset == "pickapic" and args.batch_rows < 1:
        parser.error("--batch-rows must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    convert = convert_pickapic if args.dataset == "pickapic" else convert_hpdv2
    args.out.mkdir(parents=True, exist_ok=True)
    problems = Problems(args.on_error)
    counts = collections.Counter()
    manifest_path = args.out / "pairs.jsonl"
    temporary = args.out / f".pairs.jsonl.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as manifest:
            images = convert(args, manifest, problems, counts)
    except Fatal as error:
        temporary.unlink(missing_ok=True)
        print(f"parquet_to_manifest: error: {error}", file=sys.stderr)
        return 1
    os.replace(temporary, manifest_path)
    summary = f"{manifest_path}: {counts['pairs']} pairs ({counts['ties']} ties); {images}"
    if counts["identical_images"]:
        summary += f"; {counts['identical_images']} rows with two identical images left out"
    for kind, count in sorted(problems.counts.items()):
        summary += f"; skipped_{kind}: {count}"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
