// The toy world's plugin library: its backbone (toy_backbone.hpp), data sets (toy_datasets.hpp),
// annotator (toy_annotator.hpp) and metric (toy_metric.hpp), which share one world definition.
#include "dedpo/plugin.hpp"
#include "toy_annotator.hpp"
#include "toy_backbone.hpp"
#include "toy_datasets.hpp"
#include "toy_metric.hpp"

DEDPO_PLUGIN_LIBRARY(
    dedpo::describe<dedpo::toy::ToyBackbone>(
        "toy", "1.0.0",
        "Prompt-conditioned MLP diffusion model over a low-dimensional world with a known true "
        "reward (docs/toy_world.md).",
        dedpo::toy::kToyBackboneOptions),
    dedpo::describe<dedpo::toy::ToySamples>(
        "toy_samples", "1.0.0",
        "Samples of the toy world's base distribution (denoising objective: the reference).",
        dedpo::toy::kSamplesOptions),
    dedpo::describe<dedpo::toy::ToyPairs>(
        "toy_pairs", "1.0.0",
        "Toy preference pairs from the reference model, labelled by a noisy Bradley-Terry oracle "
        "on the true reward.",
        dedpo::toy::kPairsOptions),
    dedpo::describe<dedpo::toy::ToyBiasedAnnotator>(
        "toy_biased", "1.0.0",
        "Synthetic annotator: true reward plus a spurious feature plus noise (CLIP / PickScore "
        "analogue).",
        dedpo::toy::kBiasedOptions),
    dedpo::describe<dedpo::toy::ToyRewardMetric>(
        "toy_reward", "1.0.0",
        "True reward, win rate and distance of the model's samples against its reference's.",
        dedpo::toy::kRewardOptions))
