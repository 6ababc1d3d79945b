// The CLIP-score annotator: ĝ = σ((s_A − s_B) / τ), s = 100 · cos(CLIP image, prompt).
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::scorers::ScorerAnnotatorOf<ScoreKind::clip_score>>(
    "clip_score", "1.0.0",
    "CLIP image-prompt similarity: g = sigmoid((s_A - s_B) / tau), s = 100 cos.",
    dedpo::scorers::kImageTextAnnotatorOptions))
