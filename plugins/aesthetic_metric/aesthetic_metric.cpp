// The aesthetic-score metric (the paper's AS): mean LAION aesthetic score of samples from prompt
// files.
#include "dedpo/scorers/scorer_plugins.hpp"

using dedpo::scorers::ScoreKind;

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::scorers::ScorerMetricOf<ScoreKind::aesthetic>>(
    "aesthetic", "1.0.0",
    "LAION aesthetic score (AS) of samples from prompt files.",
    dedpo::scorers::kAestheticMetricOptions))
