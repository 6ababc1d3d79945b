// HPSv2, OpenCLIP ViT-H-14 with HPSv2's weights (OpenCLIP names are mapped), s = 100 · cos: the
// annotator and the metric (the paper's HPSv2 Avg: the mean per benchmark style file and their
// average).
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(
    dedpo::describe<dedpo::scorers::ScorerAnnotatorOf<ScoreKind::hpsv2>>(
        "hpsv2", "1.0.0",
        "HPSv2 (OpenCLIP ViT-H-14): g = sigmoid((s_A - s_B) / tau), s = 100 cos.",
        dedpo::scorers::kImageTextAnnotatorOptions),
    dedpo::describe<dedpo::scorers::ScorerMetricOf<ScoreKind::hpsv2>>(
        "hpsv2", "1.0.0",
        "HPSv2 per prompt file (HPDv2 benchmark styles) and their average hpsv2_avg.",
        dedpo::scorers::kImageTextMetricOptions))
