// The HPSv2 metric (the paper's HPSv2 Avg): mean HPSv2 per benchmark style file and their average.
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::scorers::ScorerMetricOf<ScoreKind::hpsv2>>(
    "hpsv2", "1.0.0",
    "HPSv2 per prompt file (HPDv2 benchmark styles) and their average hpsv2_avg.",
    dedpo::scorers::kImageTextMetricOptions))
