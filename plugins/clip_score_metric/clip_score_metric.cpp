// The CLIP-score metric: mean 100 · cos(image, prompt) of samples from prompt files.
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::scorers::ScorerMetricOf<ScoreKind::clip_score>>(
    "clip_score", "1.0.0",
    "CLIP score (100 cos) of samples from prompt files.",
    dedpo::scorers::kImageTextMetricOptions))
