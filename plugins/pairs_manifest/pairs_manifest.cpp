// pairs_manifest: preference pairs of image files listed in a JSONL or CSV manifest, resized and
// cropped as Stable Diffusion training does, encoded into backbone space once per image variant
// and cached on disk across the runs of a grid (docs/data.md).
#include <array>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dedpo/dataset.hpp"
#include "dedpo/digest.hpp"
#include "dedpo/files.hpp"
#include "dedpo/image.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/records.hpp"
#include "dedpo/safetensors.hpp"

namespace dedpo::pairs_manifest {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using T = OptionType;

const OptionSpec kOptions[] = {
    {"manifest", T::string, nullptr,
     "JSONL (.jsonl) or CSV (.csv) file of pairs: prompt, image_a, image_b, optional label of A "
     "(1, 0, 0.5 or null), id, metadata. A relative path is relative to the working directory."},
    {"image_root", T::string, "\"\"",
     "Folder the manifest's image paths are relative to; empty = the manifest's folder."},
    {"prompt_key", T::string, "\"prompt\"", "Manifest key (CSV column) of the prompt."},
    {"image_a_key", T::string, "\"image_a\"", "Key of the first image's path."},
    {"image_b_key", T::string, "\"image_b\"", "Key of the second image's path."},
    {"label_key", T::string, "\"label\"",
     "Key of the human label of A: 1 (A preferred), 0 (B), 0.5 (tie), null or absent (none)."},
    {"id_key", T::string, "\"id\"", "Key of the pair id (string or integer); default: the line number."},
    {"crop", T::string, "\"center\"",
     "\"center\" or \"random\" crop of R x R after resizing the shorter side to R (R = the "
     "backbone's image_resolution). Random crops are drawn once per run seed and pair."},
    {"flip", T::boolean, "false",
     "Flip each image horizontally with probability 1/2, drawn once per run seed and pair."},
    {"interpolation", T::string, "\"bilinear\"",
     "\"bilinear\" or \"bicubic\", antialiased (torchvision Resize(antialias=True), PIL)."},
    {"on_error", T::string, "\"fail\"",
     "\"fail\": a bad line (malformed, missing key, bad label, missing or corrupt image, duplicate "
     "pair or id) stops loading with an error naming it; \"skip\": it is skipped and counted."},
    {"encode_batch", T::integer, "8", "Images per encode_images() call when filling the cache."},
};

// The reasons a line is refused; with on_error = "skip" each is a count in the run's results.
enum class Problem {
  malformed_line,
  missing_key,
  bad_label,
  missing_image,
  corrupt_image,
  duplicate_pair,
  duplicate_id
};
constexpr std::array<const char*, 7> kProblemNames = {
    "malformed_line", "missing_key",    "bad_label",   "missing_image",
    "corrupt_image",  "duplicate_pair", "duplicate_id"};

struct BadLine {
  Problem problem;
  std::string message;
};

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

double uniform(std::uint64_t& state) {
  return static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53;
}

// The random part of an image's preprocessing: crop position as fractions of the free range,
// and the flip. Part of the cache key, so each variant is encoded once.
struct Variant {
  double top = 0.5, left = 0.5;  // 0.5 = center
  bool flip = false;
};

// Original size and crop: SDXL's micro-conditioning (PairDataset::a_info).
struct CropInfo {
  std::int64_t height = 0, width = 0, top = 0, left = 0;
};

// torchvision's Resize(R) (shorter side to R, the longer truncated like int(R * long / short)),
// then the crop, then the flip. uint8 [H, W, 3] -> uint8 [R, R, 3].
at::Tensor resize_and_crop(const at::Tensor& image, std::int64_t resolution, bool bicubic,
                           bool center, const Variant& variant, CropInfo& info) {
  const std::int64_t height = image.size(0), width = image.size(1);
  std::int64_t new_height = resolution, new_width = resolution;
  if (height <= width) {
    new_width = static_cast<std::int64_t>(static_cast<double>(resolution) * width / height);
  } else {
    new_height = static_cast<std::int64_t>(static_cast<double>(resolution) * height / width);
  }
  at::Tensor x = image.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);
  if (new_height != height || new_width != width) {
    x = bicubic ? at::_upsample_bicubic2d_aa(x, {new_height, new_width}, false)
                : at::_upsample_bilinear2d_aa(x, {new_height, new_width}, false);
    x = x.round().clamp(0, 255);
  }
  // Center: Python's round() (half to even), as torchvision's CenterCrop and diffusers compute it.
  auto offset = [&](std::int64_t free, double u) {
    return center ? static_cast<std::int64_t>(std::nearbyint(static_cast<double>(free) / 2.0))
                  : std::min(free, static_cast<std::int64_t>(u * static_cast<double>(free + 1)));
  };
  info.height = height;
  info.width = width;
  info.top = offset(new_height - resolution, variant.top);
  info.left = offset(new_width - resolution, variant.left);
  x = x.slice(2, info.top, info.top + resolution).slice(3, info.left, info.left + resolution);
  if (variant.flip) {
    x = x.flip({3});
    info.left = new_width - info.left - resolution;  // where the crop lies in the mirrored image
  }
  return x.squeeze(0).permute({1, 2, 0}).to(at::kByte).contiguous();
}

// Encoded images on disk: one safetensors file per (image content, variant, encoder), holding
// "latent" and "info" ([4]: original height, width, crop top, left). Entries are written
// atomically; a process that has images to encode holds the folder's lock until it is done, so
// two runs of a grid never encode the same image twice and never read half an entry.
class LatentCache {
 public:
  LatentCache(fs::path folder, Backbone& backbone, std::int64_t batch)
      : folder_(std::move(folder)), backbone_(backbone), batch_(batch) {
    fs::create_directories(folder_);
  }

  fs::path file(const std::string& key) const { return folder_ / (key + ".safetensors"); }

  // Queued, or on disk and loading: an entry that does not load (cut short by a killed write,
  // damaged) counts as missing, and add() encodes it again.
  bool contains(const std::string& key) const {
    return pending_keys_.count(key) != 0 || loads(key);
  }

  // Queues a preprocessed image for encoding; false when it needs none after all (another
  // process cached it while this one waited for the lock, or it is already queued).
  bool add(const std::string& key, at::Tensor image, const CropInfo& info, const fs::path& source) {
    if (pending_keys_.count(key) != 0) return false;  // both sides of a pair may be one image
    if (!lock_) lock_.emplace(folder_ / ".lock");
    // Checked again under the lock: the caller's look may predate another process's writes.
    if (loads(key)) return false;
    std::error_code error;
    if (fs::exists(file(key), error)) {
      std::cerr << "pairs_manifest: warning: the latent cache entry " << file(key).string()
                << " does not load; it is encoded again (a cache file: deleting it is safe)\n";
      fs::remove(file(key), error);
    }
    pending_keys_.insert(key);
    pending_.push_back({key, std::move(image),
                        at::tensor({static_cast<float>(info.height), static_cast<float>(info.width),
                                    static_cast<float>(info.top), static_cast<float>(info.left)}),
                        source});
    if (static_cast<std::int64_t>(pending_.size()) >= batch_) flush();
    return true;
  }

  // Encodes what is queued and releases the lock.
  void finish() {
    flush();
    lock_.reset();
  }

  // An entry read when contains() checked that it loads is kept, so each file is read once.
  std::pair<at::Tensor, at::Tensor> load(const std::string& key) const {
    if (auto it = loaded_.find(key); it != loaded_.end()) return it->second;
    return read_entry(key);
  }

  bool loads(const std::string& key) const {
    if (loaded_.count(key) != 0) return true;
    std::error_code error;
    if (!fs::exists(file(key), error)) return false;
    try {
      loaded_.emplace(key, read_entry(key));
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }

  std::int64_t encoded() const { return encoded_; }

 private:
  struct Pending {
    std::string key;
    at::Tensor image, info;
    fs::path source;
  };

  std::pair<at::Tensor, at::Tensor> read_entry(const std::string& key) const {
    std::map<std::string, at::Tensor> entry = safetensors::load(file(key));
    if (!entry.count("latent") || !entry.count("info")) {
      throw Error(file(key).string() + ": not a latent cache entry (no 'latent' or 'info')");
    }
    return {entry.at("latent"), entry.at("info")};
  }

  void flush() {
    if (pending_.empty()) return;
    std::vector<at::Tensor> images;
    for (const Pending& p : pending_) images.push_back(p.image);
    at::Tensor latents;
    {
      at::NoGradGuard no_grad;
      latents = backbone_.encode_images(at::stack(images)).to(at::kCPU, at::kFloat);
    }
    for (std::size_t i = 0; i < pending_.size(); ++i) {
      safetensors::save(file(pending_[i].key),
                        std::map<std::string, at::Tensor>{
                            {"latent", latents[static_cast<std::int64_t>(i)].contiguous()},
                            {"info", pending_[i].info}},
                        {{"source", pending_[i].source.string()}});
    }
    encoded_ += static_cast<std::int64_t>(pending_.size());
    pending_.clear();
    pending_keys_.clear();
  }

  fs::path folder_;
  Backbone& backbone_;
  std::int64_t batch_;
  std::optional<FileLock> lock_;
  std::vector<Pending> pending_;
  std::set<std::string> pending_keys_;
  mutable std::map<std::string, std::pair<at::Tensor, at::Tensor>> loaded_;  // read by loads()
  std::int64_t encoded_ = 0;
};

struct Pair {
  std::string id, prompt;
  float label = NAN;
  std::string key_a, key_b;  // latent cache keys
  fs::path file_a, file_b;
};

class PairsManifest : public Dataset {
 public:
  explicit PairsManifest(const Options& options)
      : options_(options), manifest_(options.string("manifest")),
        crop_(options.string("crop")), interpolation_(options.string("interpolation")),
        on_error_(options.string("on_error")), encode_batch_(options.integer("encode_batch")) {
    if (manifest_.empty()) options.fail("manifest", "expected the path of a .jsonl or .csv file");
    try {
      format_ = record_format_of(manifest_);
    } catch (const Error& error) {
      options.fail("manifest", error.what());
    }
    if (crop_ != "center" && crop_ != "random") {
      options.fail("crop", "expected \"center\" or \"random\", got \"" + crop_ + "\"");
    }
    if (interpolation_ != "bilinear" && interpolation_ != "bicubic") {
      options.fail("interpolation",
                   "expected \"bilinear\" or \"bicubic\", got \"" + interpolation_ + "\"");
    }
    if (on_error_ != "fail" && on_error_ != "skip") {
      options.fail("on_error", "expected \"fail\" or \"skip\", got \"" + on_error_ + "\"");
    }
    if (encode_batch_ < 1) options.fail("encode_batch", "must be ≥ 1");
    for (const char* key : {"prompt_key", "image_a_key", "image_b_key", "label_key", "id_key"}) {
      if (options.string(key).empty()) options.fail(key, "expected a key name");
    }
    const std::string& root = options.string("image_root");
    image_root_ = root.empty() ? manifest_.parent_path() : fs::path(root);
  }

  PairDataset pairs(DatasetContext& context) override {
    Backbone& backbone = context.backbone;
    resolution_ = backbone.image_resolution();
    if (resolution_ <= 0) {
      throw Error(options_.where() + ": the backbone does not work on images (image_resolution() "
                                     "is 0); pairs_manifest needs an image backbone such as sd15");
    }
    const std::string encoder = backbone.encoder_fingerprint();
    if (encoder.empty()) {
      throw Error(options_.where() + ": the backbone gives no encoder_fingerprint(), so its "
                                     "encoded images cannot be cached");
    }
    encoder_digest_ = digest(encoder);
    seed_ = context.seed;
    id_lines_.clear();
    pair_lines_.clear();
    LatentCache cache(context.cache_dir / "latents" / encoder_digest_, backbone, encode_batch_);

    std::vector<Pair> pairs;
    std::array<std::int64_t, kProblemNames.size()> skipped{};
    std::int64_t reused = 0;
    for (const Record& record : read_records(manifest_, format_)) {
      try {
        pairs.push_back(read_pair(record, cache, reused));
      } catch (const BadLine& bad) {
        if (on_error_ != "skip") throw Error(bad.message);
        const std::int64_t total = ++skipped[static_cast<std::size_t>(bad.problem)];
        if (total <= kShownPerProblem) std::cerr << "pairs_manifest: skipped " << bad.message << "\n";
      }
    }
    cache.finish();
    if (pairs.empty()) throw Error(manifest_.string() + ": no usable pairs");
    return assemble(pairs, cache, skipped, reused);
  }

 private:
  static constexpr std::int64_t kShownPerProblem = 10;

  [[noreturn]] void bad(const Record& record, Problem problem, const std::string& what) const {
    throw BadLine{problem, manifest_.string() + ":" + std::to_string(record.line) + ": " + what};
  }

  std::string text_field(const Record& record, const std::string& key) const {
    const json& fields = record.fields;
    if (!fields.contains(key)) bad(record, Problem::missing_key, "missing key '" + key + "'");
    const json& value = fields.at(key);
    if (!value.is_string() || value.get<std::string>().empty()) {
      bad(record, Problem::missing_key,
          "key '" + key + "': expected a non-empty string, got " + value.dump());
    }
    return value.get<std::string>();
  }

  float label_field(const Record& record) const {
    const std::string& key = options_.string("label_key");
    if (!record.fields.contains(key)) return NAN;
    const json& value = record.fields.at(key);
    if (value.is_null() || (value.is_string() && value.get<std::string>().empty())) return NAN;
    std::optional<double> number;
    if (value.is_number()) {
      number = value.get<double>();
    } else if (value.is_string()) {
      const std::string text = value.get<std::string>();
      if (text == "1" || text == "1.0") number = 1.0;
      if (text == "0" || text == "0.0") number = 0.0;
      if (text == "0.5") number = 0.5;
    }
    if (!number || (*number != 1.0 && *number != 0.0 && *number != 0.5)) {
      bad(record, Problem::bad_label,
          "key '" + key + "': expected 1, 0, 0.5 or null (no label), got " + value.dump());
    }
    return static_cast<float>(*number);
  }

  std::string id_field(const Record& record) const {
    const std::string& key = options_.string("id_key");
    if (!record.fields.contains(key)) return std::to_string(record.line);
    const json& value = record.fields.at(key);
    if (value.is_string() && !value.get<std::string>().empty()) return value.get<std::string>();
    if (value.is_number_integer()) return value.dump();
    bad(record, Problem::missing_key,
        "key '" + key + "': expected a non-empty string or an integer, got " + value.dump());
  }

  // One image of a line: read, keyed by content and variant, decoded and queued for encoding
  // when the cache lacks it.
  struct Side {
    fs::path file;
    std::string bytes, content, key;
  };

  Side read_side(const Record& record, const std::string& key, const std::string& pair_id,
                 int side_index) const {
    Side side;
    const std::string path = text_field(record, key);
    side.file = fs::absolute(image_root_ / path);
    if (const std::string problem = image_file_problem(side.file); !problem.empty()) {
      bad(record, Problem::missing_image,
          "key '" + key + "': " + problem + ": " + side.file.string());
    }
    side.bytes = read_file(side.file);
    side.content = digest(side.bytes) + "-" + std::to_string(side.bytes.size());
    Variant variant = draw_variant(pair_id, side_index);
    side.key = digest(cache_key_text(side.content, variant));
    return side;
  }

  Variant draw_variant(const std::string& pair_id, int side_index) const {
    Variant variant;
    const bool random_crop = crop_ == "random", flip = options_.boolean("flip");
    if (!random_crop && !flip) return variant;
    std::uint64_t state =
        seed_ ^ std::stoull(digest(pair_id + "#" + std::to_string(side_index)), nullptr, 16);
    const double top = uniform(state), left = uniform(state), coin = uniform(state);
    if (random_crop) {
      variant.top = top;
      variant.left = left;
    }
    variant.flip = flip && coin < 0.5;
    return variant;
  }

  std::string cache_key_text(const std::string& content, const Variant& variant) const {
    std::string key = "pairs_manifest latent v1\nencoder=" + encoder_digest_ +
                      "\ncontent=" + content + "\nresolution=" + std::to_string(resolution_) +
                      "\ninterpolation=" + interpolation_ + "\ncrop=" + crop_;
    if (crop_ == "random") key += fmt_double(variant.top) + "," + fmt_double(variant.left);
    return key + "\nflip=" + (variant.flip ? "1" : "0") + "\n";
  }

  static std::string fmt_double(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.17g", value);
    return buffer;
  }

  // The preprocessed image of a side whose variant the cache lacks; nothing when cached.
  struct Prepared {
    at::Tensor image;
    CropInfo info;
  };
  std::optional<Prepared> prepare(const Record& record, const std::string& key, const Side& side,
                                  const std::string& pair_id, int side_index,
                                  const LatentCache& cache, std::int64_t& reused) const {
    if (cache.contains(side.key)) {
      ++reused;
      return std::nullopt;
    }
    at::Tensor image;
    try {
      image = decode_image(side.bytes, manifest_.string() + ":" + std::to_string(record.line) +
                                           ": key '" + key + "': " + side.file.string());
    } catch (const Error& error) {
      throw BadLine{Problem::corrupt_image, error.what()};
    }
    Prepared prepared;
    prepared.image = resize_and_crop(image, resolution_, interpolation_ == "bicubic",
                                     crop_ == "center", draw_variant(pair_id, side_index),
                                     prepared.info);
    return prepared;
  }

  Pair read_pair(const Record& record, LatentCache& cache, std::int64_t& reused) {
    if (!record.error.empty()) bad(record, Problem::malformed_line, record.error);
    Pair pair;
    pair.prompt = text_field(record, options_.string("prompt_key"));
    pair.label = label_field(record);
    pair.id = id_field(record);
    const std::string& key_a = options_.string("image_a_key");
    const std::string& key_b = options_.string("image_b_key");
    Side a = read_side(record, key_a, pair.id, 0);
    Side b = read_side(record, key_b, pair.id, 1);
    if (auto it = id_lines_.find(pair.id); it != id_lines_.end()) {
      bad(record, Problem::duplicate_id,
          "key '" + options_.string("id_key") + "': duplicate id '" + pair.id + "' (first on line " +
              std::to_string(it->second) + ")");
    }
    // The same prompt and the same two images (by content), in either order.
    auto identity = std::make_tuple(pair.prompt, std::min(a.content, b.content),
                                    std::max(a.content, b.content));
    if (auto it = pair_lines_.find(identity); it != pair_lines_.end()) {
      bad(record, Problem::duplicate_pair,
          "duplicate pair: the same prompt and images as line " + std::to_string(it->second));
    }
    // Both sides are decoded before either is queued: a corrupt B leaves no stray work for A.
    std::optional<Prepared> prepared_a = prepare(record, key_a, a, pair.id, 0, cache, reused);
    std::optional<Prepared> prepared_b = prepare(record, key_b, b, pair.id, 1, cache, reused);
    if (prepared_a && !cache.add(a.key, prepared_a->image, prepared_a->info, a.file)) ++reused;
    if (prepared_b && !cache.add(b.key, prepared_b->image, prepared_b->info, b.file)) ++reused;
    id_lines_.emplace(pair.id, record.line);
    pair_lines_.emplace(identity, record.line);
    pair.key_a = a.key;
    pair.key_b = b.key;
    pair.file_a = a.file;
    pair.file_b = b.file;
    return pair;
  }

  PairDataset assemble(const std::vector<Pair>& pairs, const LatentCache& cache,
                       const std::array<std::int64_t, kProblemNames.size()>& skipped,
                       std::int64_t reused) const {
    PairDataset data;
    std::map<std::string, std::int64_t> prompt_ids;
    std::vector<std::int64_t> prompt_index;
    std::vector<float> labels;
    std::vector<at::Tensor> a, b, a_info, b_info;
    std::string fingerprint = "pairs_manifest v1\nencoder=" + encoder_digest_ + "\n";
    for (const Pair& pair : pairs) {
      auto [it, added] =
          prompt_ids.emplace(pair.prompt, static_cast<std::int64_t>(data.prompts.size()));
      if (added) data.prompts.push_back(pair.prompt);
      prompt_index.push_back(it->second);
      labels.push_back(pair.label);
      auto [latent_a, info_a] = cache.load(pair.key_a);
      auto [latent_b, info_b] = cache.load(pair.key_b);
      a.push_back(latent_a);
      b.push_back(latent_b);
      a_info.push_back(info_a);
      b_info.push_back(info_b);
      data.a_files.push_back(pair.file_a);
      data.b_files.push_back(pair.file_b);
      data.ids.push_back(pair.id);
      fingerprint += pair.id + "\t" + pair.prompt + "\t" + pair.key_a + "\t" + pair.key_b + "\t" +
                     fmt_double(pair.label) + "\n";
    }
    data.prompt_index = at::tensor(prompt_index, at::kLong);
    data.human_label = at::tensor(labels, at::kFloat);
    data.a = at::stack(a);
    data.b = at::stack(b);
    data.a_info = at::stack(a_info);
    data.b_info = at::stack(b_info);
    data.fingerprint = "pairs_manifest-" + digest(fingerprint);
    for (std::size_t i = 0; i < kProblemNames.size(); ++i) {
      if (skipped[i] > 0) data.counts.emplace_back(std::string("skipped_") + kProblemNames[i], skipped[i]);
    }
    data.counts.emplace_back("images_encoded", cache.encoded());
    data.counts.emplace_back("images_from_cache", reused);
    return data;
  }

  Options options_;
  fs::path manifest_, image_root_;
  RecordFormat format_ = RecordFormat::jsonl;
  std::string crop_, interpolation_, on_error_;
  std::int64_t encode_batch_;
  // Per call of pairs().
  std::int64_t resolution_ = 0;
  std::string encoder_digest_;
  std::uint64_t seed_ = 0;
  std::map<std::string, std::int64_t> id_lines_;
  std::map<std::tuple<std::string, std::string, std::string>, std::int64_t> pair_lines_;
};

}  // namespace
}  // namespace dedpo::pairs_manifest

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::pairs_manifest::PairsManifest>(
    "pairs_manifest", "1.0.0",
    "Preference pairs of image files from a JSONL or CSV manifest; images resized, cropped and "
    "encoded once into a disk cache shared by the runs of a grid (docs/data.md).",
    dedpo::pairs_manifest::kOptions))
