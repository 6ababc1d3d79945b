// The PickScore metric (the paper's PS column): mean PickScore of samples from prompt files.
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::scorers::ScorerMetricOf<ScoreKind::pickscore>>(
    "pickscore", "1.0.0",
    "PickScore (PS) of samples from prompt files.",
    dedpo::scorers::kImageTextMetricOptions))
