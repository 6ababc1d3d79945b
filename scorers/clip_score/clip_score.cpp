// CLIP score, s = 100 · cos(CLIP image, prompt): the annotator ĝ = σ((s_A − s_B) / τ) and the
// metric (mean score of samples from prompt files).
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(
    dedpo::describe<dedpo::scorers::ScorerAnnotatorOf<ScoreKind::clip_score>>(
        "clip_score", "1.0.0",
        "CLIP image-prompt similarity: g = sigmoid((s_A - s_B) / tau), s = 100 cos.",
        dedpo::scorers::kImageTextAnnotatorOptions),
    dedpo::describe<dedpo::scorers::ScorerMetricOf<ScoreKind::clip_score>>(
        "clip_score", "1.0.0", "CLIP score (100 cos) of samples from prompt files.",
        dedpo::scorers::kImageTextMetricOptions))
