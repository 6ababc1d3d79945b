#pragma once
// OpenCLIP state dicts (the layout HPSv2's checkpoint ships in) -> transformers CLIPModel names.
// The map itself is a table of rules (open_clip_keys.cpp), kept apart from the model code:
//
//   visual.transformer.resblocks.{n}.attn.in_proj_weight -> vision_model.encoder.layers.{n}.self_attn.{q,k,v}_proj.weight
//   visual.proj  -> visual_projection.weight (transposed), ...
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

namespace dedpo::scorers {

enum class KeyTransform {
  copy,
  transpose,  // OpenCLIP stores projections as x @ P ([in, out]); a Linear weight is [out, in]
  split_qkv,  // nn.MultiheadAttention's packed in_proj: rows q, k, v -> q_proj, k_proj, v_proj
};

struct KeyRule {
  const char* open_clip;     // "{n}" stands for a layer index
  const char* transformers;  // "{n}" as above; "{qkv}" stands for q_proj / k_proj / v_proj
  KeyTransform transform;
};

// Every rule, text tower first.
const std::vector<KeyRule>& open_clip_key_rules();

// True when the keys look like an OpenCLIP CLIP state dict (they hold "visual.conv1.weight").
bool is_open_clip_layout(const std::map<std::string, at::Tensor>& tensors);

// Renames (and transposes / splits) every tensor by the rules. Keys no rule matches are collected
// in `unmatched` (the caller reports them with the missing ones); OpenCLIP's non-persistent
// "attn_mask" buffers are dropped.
std::map<std::string, at::Tensor> open_clip_to_transformers(const std::map<std::string, at::Tensor>& tensors,
                                                           std::vector<std::string>& unmatched);

}  // namespace dedpo::scorers
