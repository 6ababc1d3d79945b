// The LAION aesthetic predictor, CLIP ViT-L/14 image embedding (L2-normalised) + the aesthetic
// MLP head: the annotator and the metric (the paper's AS column).
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(
    dedpo::describe<dedpo::scorers::ScorerAnnotatorOf<ScoreKind::aesthetic>>(
        "aesthetic", "1.0.0", "LAION aesthetic predictor: g = sigmoid((a_A - a_B) / tau).",
        dedpo::scorers::kAestheticAnnotatorOptions),
    dedpo::describe<dedpo::scorers::ScorerMetricOf<ScoreKind::aesthetic>>(
        "aesthetic", "1.0.0", "LAION aesthetic score (AS) of samples from prompt files.",
        dedpo::scorers::kAestheticMetricOptions))
