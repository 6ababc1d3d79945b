// The LAION aesthetic annotator: CLIP ViT-L/14 image embedding (L2-normalised) + the aesthetic MLP
// head.
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::scorers::ScorerAnnotatorOf<ScoreKind::aesthetic>>(
    "aesthetic", "1.0.0",
    "LAION aesthetic predictor: g = sigmoid((a_A - a_B) / tau).",
    dedpo::scorers::kAestheticAnnotatorOptions))
