// Schemas of the core-owned experiment tables.
#include "dedpo/experiment.hpp"

namespace dedpo {
namespace {

using T = OptionType;

const OptionSpec kRunOptions[] = {
    {"name", T::string, "\"experiment\"", "Run name; the run folder is <output>/<name>-<n>."},
    {"seed", T::integer, "0", "Seed of everything random in the run (data split, noise, init)."},
    {"output", T::string, "\"runs\"",
     "Folder that receives run folders, relative to the experiment file."},
    {"threads", T::integer, "0", "LibTorch intra-op threads; 0 = one per core."},
    {"device", T::string, "\"cpu\"", "\"cpu\" or \"cuda\" (\"cuda:N\")."},
};

const OptionSpec kTrainOptions[] = {
    {"objective", T::string, "\"preference\"",
     "\"preference\": pairs and the [loss] plugin; \"denoising\": single samples, plain "
     "diffusion loss (trains a reference model)."},
    {"steps", T::integer, "1000", "Optimiser steps."},
    {"batch_size", T::integer, "64", "Pairs (or samples) per optimiser micro-batch."},
    {"grad_accum", T::integer, "1", "Micro-batches accumulated per optimiser step."},
    {"labelled_fraction", T::real, "1.0",
     "Fraction of the data's human labels training may use; the rest are unlabelled."},
    {"split", T::string, "\"random\"",
     "How the labelled subset is drawn: \"random\" (uniform over labelled pairs) or "
     "\"by_prompt\" (stratified: each prompt gets its share of labels, rounded). Written to the "
     "run folder's split.csv."},
    {"ties", T::string, "\"keep\"",
     "Pairs whose human label is a tie (0.5): \"keep\" them as 0.5 or \"drop\" them from the "
     "data before the split; the count is logged and in results.json."},
    {"optimizer", T::string, "\"adamw\"", "\"adamw\" or \"adafactor\"."},
    {"lr", T::real, "1e-4", "Peak learning rate."},
    {"weight_decay", T::real, "0.0", "Decoupled weight decay."},
    {"adam_beta1", T::real, "0.9", "AdamW first-moment decay."},
    {"adam_beta2", T::real, "0.999", "AdamW second-moment decay."},
    {"adam_eps", T::real, "1e-8", "AdamW epsilon."},
    {"warmup_steps", T::integer, "0", "Linear learning-rate warm-up steps."},
    {"schedule", T::string, "\"constant\"",
     "Learning rate after warm-up: \"constant\", \"linear\" or \"cosine\" decay to 0."},
    {"max_grad_norm", T::real, "0.0", "Clip the global gradient norm to this; 0 = off."},
    {"precision", T::string, "\"fp32\"", "\"fp32\" or \"bf16\" (autocast)."},
    {"ema_decay", T::real, "0.0", "Exponential moving average of the weights; 0 = off."},
    {"checkpoint_every", T::integer, "0", "Checkpoint every N steps; 0 = only at the end."},
    {"log_every", T::integer, "10", "Write metrics.jsonl every N steps."},
};

const OptionSpec kEvalOptions[] = {
    {"seed", T::integer, "1234",
     "Evaluation seed: the same for every run, so runs are compared on the same noise."},
    {"every", T::integer, "0", "Also evaluate every N steps; 0 = only after training."},
};

const OptionSpec kInitOptions[] = {
    {"experiment", T::string, "\"\"",
     "Experiment file whose final weights initialise the backbone (and its reference); run "
     "once and cached by its resolved configuration."},
    {"weights", T::string, "\"\"", "Weights file that initialises the backbone."},
};

}  // namespace

std::span<const OptionSpec> run_options_schema() { return kRunOptions; }
std::span<const OptionSpec> train_options_schema() { return kTrainOptions; }
std::span<const OptionSpec> eval_options_schema() { return kEvalOptions; }
std::span<const OptionSpec> init_options_schema() { return kInitOptions; }

}  // namespace dedpo
