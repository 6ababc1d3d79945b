// PickScore, CLIP-H with PickScore's weights, s = exp(logit_scale) · cos: the annotator (τ = 1
// gives PickScore's preference probability) and the metric (the paper's PS column).
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(
    dedpo::describe<dedpo::scorers::ScorerAnnotatorOf<ScoreKind::pickscore>>(
        "pickscore", "1.0.0",
        "PickScore (CLIP-H): g = sigmoid((s_A - s_B) / tau), s = logit_scale cos.",
        dedpo::scorers::kImageTextAnnotatorOptions),
    dedpo::describe<dedpo::scorers::ScorerMetricOf<ScoreKind::pickscore>>(
        "pickscore", "1.0.0", "PickScore (PS) of samples from prompt files.",
        dedpo::scorers::kImageTextMetricOptions))
