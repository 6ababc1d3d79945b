#!/usr/bin/env python3
"""Round trips between dedpo and the real diffusers / transformers / open_clip_torch (ctest label "interop").

Both directions for each component, on tiny random-weight models:
  A. dedpo writes the model (dedpo_make_tiny_sd, dedpo_make_tiny_clip) -> diffusers / transformers
     open it with from_pretrained (no missing or unexpected key) -> same outputs as dedpo;
  B. diffusers / transformers create a model and save_pretrained it -> dedpo loads it (every key
     used, every parameter filled) -> same outputs.
Outputs are compared in float32 on the CPU: max abs diff <= 1e-4. The tokenizer's ids must be equal
on a generated corpus of 1,200 prompts, on code points one by one, and with a learned vocabulary read
from tokenizer.json and from vocab.json + merges.txt. OpenCLIP (HPSv2's layout) goes one way only:
open_clip_torch writes, dedpo's scorer reads.

  python tests/interop/roundtrip.py [TestClass ...]   (ctest runs one class per test)

The programs come from the environment (set by tests/interop/CMakeLists.txt): DEDPO_INTEROP,
DEDPO_MAKE_TINY_SD, DEDPO_MAKE_TINY_CLIP. Exits 77 (ctest: skipped) without the Python packages.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

try:
    import torch
    import diffusers
    import transformers
    from peft import LoraConfig  # diffusers' LoRA loading needs peft
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file
except ImportError as missing:
    print(f"interop: skipped, {missing} (scripts/setup.sh installs the pinned versions)")
    sys.exit(77)

TOLERANCE = 1e-4


def tool(variable):
    path = os.environ.get(variable)
    if not path or not Path(path).is_file():
        raise RuntimeError(f"{variable} must name the built program (ctest sets it); got {path!r}")
    return path


def run(*command):
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def dedpo(component, folder, inputs, work):
    """dedpo's outputs of `component` loaded from `folder` on `inputs` (tensors by name)."""
    inputs_file, outputs_file = Path(work) / f"{component}_in.safetensors", Path(work) / f"{component}_out.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(inputs_file))
    run(tool("DEDPO_INTEROP"), component, folder, inputs_file, outputs_file)
    return load_file(str(outputs_file))


def make_tiny_sd(folder, layout, seed=0):
    run(tool("DEDPO_MAKE_TINY_SD"), folder, "--seed", seed, "--layout", layout)
    return Path(folder)


def randomize(model, seed):
    """Norm scales 1 + 0.1·N(0, 1) and biases + 0.1·N(0, 1): default inits (ones, zeros) would let a
    swapped or ignored norm or bias key pass unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def opened(loaded):
    """(model, loading info) of from_pretrained(..., output_loading_info=True)."""
    model, info = loaded
    return model.eval(), info


class RoundTrip(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self._work = tempfile.TemporaryDirectory(prefix="dedpo_interop_")
        self.work = Path(self._work.name)

    def tearDown(self):
        self._work.cleanup()

    def assert_all_keys_used(self, info):
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            self.assertEqual(list(info.get(kind, [])), [], kind)

    def assert_near(self, label, actual, expected):
        self.assertEqual(tuple(actual.shape), tuple(expected.shape), label)
        diff = (actual.double() - expected.double()).abs().max().item()
        print(f"[interop] {self.id().split('.', 1)[1]} {label}: max abs diff {diff:.3g}", flush=True)
        self.assertLessEqual(diff, TOLERANCE, label)


# ---------------------------------------------------------------------------------------------- UNet

def unet_inputs(config, added=None):
    inputs = {
        "sample": torch.randn(2, config["in_channels"], 8, 12),  # non-square
        "timestep": torch.tensor([999, 17]),
        "encoder_hidden_states": torch.randn(2, 7, config["cross_attention_dim"]),
    }
    if added is not None:
        pooled, time_ids = added
        inputs["text_embeds"] = torch.randn(2, pooled)
        inputs["time_ids"] = torch.tensor([[64.0, 96.0, 0.0, 8.0, 64.0, 96.0], [32.0, 32.0, 4.0, 0.0, 48.0, 48.0]])
    return inputs


def diffusers_unet(unet, inputs):
    added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]} if "text_embeds" in inputs else None
    with torch.no_grad():
        return unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                    added_cond_kwargs=added).sample


class UNetRoundTrip:
    """Both directions for one layout (a mixin: the layouts are the test classes)."""
    layout = None            # dedpo_make_tiny_sd --layout
    diffusers_config = None  # direction B's model, another shape than dedpo's tiny one

    @staticmethod
    def added(config):
        if config.get("addition_embed_type") != "text_time":
            return None
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        return pooled, 6

    def test_dedpo_written_unet_opens_in_diffusers(self):
        folder = make_tiny_sd(self.work / "tiny", self.layout)
        unet, info = opened(diffusers.UNet2DConditionModel.from_pretrained(
            folder / "unet", torch_dtype=torch.float32, output_loading_info=True))
        self.assert_all_keys_used(info)
        inputs = unet_inputs(unet.config, self.added(unet.config))
        actual = dedpo("unet", folder / "unet", inputs, self.work)["sample"]
        self.assert_near("noise prediction", actual, diffusers_unet(unet, inputs))

    def test_diffusers_written_unet_opens_in_dedpo(self):
        unet = randomize(diffusers.UNet2DConditionModel(**self.diffusers_config), seed=1)
        unet.save_pretrained(self.work / "unet")
        inputs = unet_inputs(unet.config, self.added(unet.config))
        actual = dedpo("unet", self.work / "unet", inputs, self.work)["sample"]
        self.assert_near("noise prediction", actual, diffusers_unet(unet, inputs))


# Three levels (dedpo's tiny models have two), 8 groups.
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), norm_num_groups=8)


class UNetSD15(UNetRoundTrip, RoundTrip):
    layout = "sd15"
    diffusers_config = dict(
        TINY_UNET, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4, cross_attention_dim=24)


class UNetSDXL(UNetRoundTrip, RoundTrip):
    layout = "sdxl"
    diffusers_config = dict(
        TINY_UNET, layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4), use_linear_projection=True,
        cross_attention_dim=40, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 24)


def write_pairs(work, count=4):
    """`count` image pairs of 16 x 16 noise and work/pairs.jsonl, the manifest of the runs below."""
    from PIL import Image  # a diffusers dependency
    generator = torch.Generator().manual_seed(5)
    (work / "img").mkdir()
    lines = []
    for i in range(count):
        for side in "ab":
            pixels = torch.randint(0, 256, (16, 16, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(work / "img" / f"{side}{i}.png")
        lines.append(json.dumps({"id": f"p{i}", "prompt": f"a photo {i}", "image_a": f"img/a{i}.png",
                                 "image_b": f"img/b{i}.png", "label": i % 2}))
    (work / "pairs.jsonl").write_text("\n".join(lines) + "\n")


def dedpo_run(work, name, layout, tiny, backbone="", lr="1e-3"):
    """The run folder of two DPO steps of `dedpo run` on work/pairs.jsonl; `backbone`: more option lines."""
    experiment = work / f"{name}.toml"
    experiment.write_text(
        f'[run]\nname = "{name}"\noutput = "{work / "runs"}"\nthreads = 1\n'
        f'[backbone]\nplugin = "{layout}"\npath = "{tiny}"\nresolution = 16\n{backbone}'
        f'[data]\nplugin = "pairs_manifest"\nmanifest = "{work / "pairs.jsonl"}"\n'
        f'[loss]\nplugin = "dpo"\n[train]\nsteps = 2\nbatch_size = 2\nlr = {lr}\n')
    run(tool("DEDPO_EXECUTABLE"), "run", experiment)
    [folder] = (work / "runs").glob(f"{name}-*")
    return folder


def run_unet_folder(run_folder, folder):
    """A run's saved UNet (weights.pt + config.json) as a diffusers unet/ folder."""
    folder.mkdir()
    (folder / "config.json").write_bytes((run_folder / "config.json").read_bytes())
    (folder / "diffusion_pytorch_model.safetensors").write_bytes((run_folder / "weights.pt").read_bytes())
    return folder


class TrainedUNet(RoundTrip):
    """A UNet as a run saves it (weights.pt + config.json, save_weights) after a few DPO steps on
    image pairs: renamed to diffusers' file name, it opens with from_pretrained."""

    def test_run_weights_open_in_diffusers(self):
        write_pairs(self.work)
        for layout in ("sd15", "sdxl"):
            with self.subTest(layout=layout):
                tiny = make_tiny_sd(self.work / layout, layout)
                unet_folder = run_unet_folder(dedpo_run(self.work, layout, layout, tiny), self.work / f"{layout}_unet")
                unet, info = opened(diffusers.UNet2DConditionModel.from_pretrained(
                    unet_folder, torch_dtype=torch.float32, output_loading_info=True))
                self.assert_all_keys_used(info)
                trained, initial = load_file(str(unet_folder / "diffusion_pytorch_model.safetensors")), \
                    load_file(str(tiny / "unet" / "diffusion_pytorch_model.safetensors"))
                self.assertFalse(torch.equal(trained["conv_in.weight"], initial["conv_in.weight"]), "the run trained")
                inputs = unet_inputs(unet.config, UNetRoundTrip.added(unet.config))
                actual = dedpo("unet", unet_folder, inputs, self.work)["sample"]
                self.assert_near("noise prediction", actual, diffusers_unet(unet, inputs))


# ---------------------------------------------------------------------------------------------- LoRA

# Rank 2, alpha 3: a scale of 1.5, so that an alpha read as the rank (scale 1) shows.
LORA = 'lora_rank = 2\nlora_alpha = 3.0\n'
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # dedpo's default lora_targets
# So small that no step changes a float32 value: such a run saves the adapters it started from.
NO_STEP_LR = "1e-30"


class LoraRoundTrip:
    """LoRA adapters both ways for one layout (a mixin: the layouts are the test classes): a LoRA run
    saves them in each lora_format and the pipeline's load_lora_weights gives the run's merged
    prediction; adapters made with peft and saved with the pipeline's save_lora_weights start a run
    (lora_init) with the same prediction, and come back through the kohya format key for key."""
    layout = None
    pipeline_class = None  # the diffusers pipeline of the layout

    def setUp(self):
        super().setUp()
        write_pairs(self.work)
        self.tiny = make_tiny_sd(self.work / "tiny", self.layout)

    def pipeline(self):
        return self.pipeline_class.from_pretrained(self.tiny, torch_dtype=torch.float32)

    def inputs(self, unet):
        torch.manual_seed(7)
        return unet_inputs(unet.config, UNetRoundTrip.added(unet.config))

    def merged_prediction(self, run_folder, inputs):
        return dedpo("unet", run_unet_folder(run_folder, self.work / f"{run_folder.name}_unet"), inputs, self.work)["sample"]

    def check_kohya_names(self, lora_file):
        keys = list(load_file(str(lora_file)))
        self.assertTrue(all(k.startswith("lora_unet_") for k in keys), keys[:3])
        self.assertEqual(sum(k.endswith(".alpha") for k in keys) * 3, len(keys), "lora_down, lora_up, alpha per module")
        # kohya-ss names SD1.x modules as the diffusers UNet does, SDXL's as the original (SGM) UNet.
        sgm = any(k.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_")) for k in keys)
        self.assertEqual(sgm, self.layout == "sdxl")

    def test_dedpo_lora_loads_with_load_lora_weights(self):
        for lora_format in ("diffusers", "kohya"):
            with self.subTest(lora_format=lora_format):
                folder = dedpo_run(self.work, f"{self.layout}_{lora_format}", self.layout, self.tiny,
                                   LORA + f'lora_format = "{lora_format}"\n', lr="5e-2")
                if lora_format == "kohya":
                    self.check_kohya_names(folder / "weights_lora.safetensors")
                pipeline = self.pipeline()
                inputs = self.inputs(pipeline.unet)
                base = diffusers_unet(pipeline.unet, inputs)
                pipeline.load_lora_weights(str(folder), weight_name="weights_lora.safetensors")
                merged = self.merged_prediction(folder, inputs)
                self.assert_near(f"{lora_format} LoRA noise prediction", diffusers_unet(pipeline.unet, inputs), merged)
                self.assertGreater((merged - base).abs().max().item(), 100 * TOLERANCE, "the adapters count")

    def test_peft_lora_starts_a_dedpo_run(self):
        pipeline = self.pipeline()
        # init_lora_weights=False: lora_B random too, so that the adapters change the prediction.
        pipeline.unet.add_adapter(LoraConfig(r=2, lora_alpha=3, target_modules=LORA_TARGETS, init_lora_weights=False))
        inputs = self.inputs(pipeline.unet)
        expected = diffusers_unet(pipeline.unet, inputs)
        self.pipeline_class.save_lora_weights(self.work / "peft", unet_lora_layers=get_peft_model_state_dict(pipeline.unet),
                                              unet_lora_adapter_metadata=pipeline.unet.peft_config["default"].to_dict())
        peft_file = self.work / "peft" / "pytorch_lora_weights.safetensors"

        # peft's file starts a run that saves the kohya format ...
        folder = dedpo_run(self.work, f"{self.layout}_from_peft", self.layout, self.tiny,
                           LORA + f'lora_init = "{peft_file}"\nlora_format = "kohya"\n', lr=NO_STEP_LR)
        self.assert_near("dedpo from peft's LoRA, noise prediction", self.merged_prediction(folder, inputs), expected)
        kohya_file = folder / "weights_lora.safetensors"
        self.check_kohya_names(kohya_file)
        kohya_pipeline = self.pipeline()
        kohya_pipeline.load_lora_weights(str(folder), weight_name=kohya_file.name)
        self.assert_near("diffusers from dedpo's kohya LoRA, noise prediction", diffusers_unet(kohya_pipeline.unet, inputs), expected)

        # ... which starts a run that saves the diffusers format: peft's file again, key for key.
        folder = dedpo_run(self.work, f"{self.layout}_from_kohya", self.layout, self.tiny,
                           LORA + f'lora_init = "{kohya_file}"\n', lr=NO_STEP_LR)
        original, back = load_file(str(peft_file)), load_file(str(folder / "weights_lora.safetensors"))
        self.assertEqual(sorted(back), sorted(original))
        self.assertTrue(all(torch.equal(back[k], original[k]) for k in original), "tensors equal")


class LoraSD15(LoraRoundTrip, RoundTrip):
    layout = "sd15"
    pipeline_class = diffusers.StableDiffusionPipeline


class LoraSDXL(LoraRoundTrip, RoundTrip):
    layout = "sdxl"
    pipeline_class = diffusers.StableDiffusionXLPipeline


# ----------------------------------------------------------------------------------------------- VAE

class VAE(RoundTrip):
    def check(self, vae, folder):
        inputs = {"image": torch.randn(2, 3, 16, 12), "latents": torch.randn(2, 4, 5, 3)}
        actual = dedpo("vae", folder, inputs, self.work)
        with torch.no_grad():
            posterior = vae.encode(inputs["image"]).latent_dist
            decoded = vae.decode(inputs["latents"]).sample
        self.assert_near("latent mean", actual["latent_mean"], posterior.mean)
        self.assert_near("latent logvar", actual["latent_logvar"], posterior.logvar)
        self.assert_near("decoded", actual["decoded"], decoded)

    def test_dedpo_written_vae_opens_in_diffusers(self):
        for layout in ("sd15", "sdxl"):
            with self.subTest(layout=layout):
                folder = make_tiny_sd(self.work / layout, layout)
                vae, info = opened(diffusers.AutoencoderKL.from_pretrained(
                    folder / "vae", torch_dtype=torch.float32, output_loading_info=True))
                self.assert_all_keys_used(info)
                self.check(vae, folder / "vae")

    def test_diffusers_written_vae_opens_in_dedpo(self):
        vae = randomize(diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=4,
            block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, sample_size=16), seed=2)
        vae.save_pretrained(self.work / "vae")
        self.check(vae, self.work / "vae")


# ------------------------------------------------------------------------------------- text encoders

def transformers_text(model, inputs):
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                    output_hidden_states=True)
    expected = {"last_hidden_state": out.last_hidden_state, "hidden_states": torch.stack(out.hidden_states)}
    if hasattr(out, "text_embeds"):
        expected["text_embeds"] = out.text_embeds
    else:
        expected["pooler_output"] = out.pooler_output
    return expected


PROMPTS = ["a photo of a cat", "", "a red dog, photo! 123 ÉTÉ"]


class TextEncoders(RoundTrip):
    def check(self, model, folder, tokenizer):
        encoded = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        # Pipelines pass no attention mask; scorers do.
        for inputs in ({"input_ids": encoded.input_ids},
                       {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}):
            masked = "with mask" if "attention_mask" in inputs else "no mask"
            actual = dedpo("text", folder, inputs, self.work)
            for name, expected in transformers_text(model, inputs).items():
                self.assert_near(f"{name} ({masked})", actual[name], expected)

    def test_dedpo_written_text_encoders_open_in_transformers(self):
        folder = make_tiny_sd(self.work / "sdxl", "sdxl")
        for part, tokenizer_part, kind in (("text_encoder", "tokenizer", transformers.CLIPTextModel),
                                           ("text_encoder_2", "tokenizer_2", transformers.CLIPTextModelWithProjection)):
            with self.subTest(part=part):
                model, info = opened(kind.from_pretrained(folder / part, dtype=torch.float32, output_loading_info=True))
                self.assert_all_keys_used(info)
                self.check(model, folder / part, transformers.CLIPTokenizer.from_pretrained(folder / tokenizer_part))

    def test_transformers_written_text_encoders_open_in_dedpo(self):
        tokenizer = transformers.CLIPTokenizer.from_pretrained(make_tiny_sd(self.work / "sd15", "sd15") / "tokenizer")
        vocab = len(tokenizer)
        # eos_token_id 2 selects transformers' legacy argmax pooling, the real id the first-EOS one.
        for kind, eos in ((transformers.CLIPTextModel, 2), (transformers.CLIPTextModelWithProjection, tokenizer.eos_token_id)):
            with self.subTest(kind=kind.__name__):
                config = transformers.CLIPTextConfig(
                    vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                    num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", projection_dim=24,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=1)
                model = randomize(kind(config), seed=3)
                model.save_pretrained(self.work / kind.__name__)
                self.check(model, self.work / kind.__name__, tokenizer)


# ------------------------------------------------------------------------------ CLIPModel (scorers)

def projected(features):
    """get_text_features / get_image_features: a tensor in transformers 4, an output whose
    pooler_output holds the projection in transformers 5."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


class ClipModel(RoundTrip):
    def check(self, model, folder):
        tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
        encoded = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        size = model.config.vision_config.image_size
        inputs = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask,
                  "pixel_values": torch.randn(2, 3, size, size)}
        actual = dedpo("clip", folder, inputs, self.work)
        with torch.no_grad():
            out = model(**inputs)
            text_features = projected(model.get_text_features(input_ids=inputs["input_ids"],
                                                              attention_mask=inputs["attention_mask"]))
            image_features = projected(model.get_image_features(pixel_values=inputs["pixel_values"]))
        self.assert_near("logits_per_image", actual["logits_per_image"], out.logits_per_image)
        self.assert_near("text_embeds", actual["text_embeds"], out.text_embeds)
        self.assert_near("image_embeds", actual["image_embeds"], out.image_embeds)
        self.assert_near("text_features", actual["text_features"], text_features)
        self.assert_near("image_features", actual["image_features"], image_features)

    def test_dedpo_written_clip_model_opens_in_transformers(self):
        folder = self.work / "clip"
        run(tool("DEDPO_MAKE_TINY_CLIP"), folder)
        model, info = opened(transformers.CLIPModel.from_pretrained(folder, dtype=torch.float32, output_loading_info=True))
        self.assert_all_keys_used(info)
        self.check(model, folder)

    def test_transformers_written_clip_model_opens_in_dedpo(self):
        folder = self.work / "clip"
        run(tool("DEDPO_MAKE_TINY_CLIP"), folder)  # for its tokenizer files
        tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
        config = transformers.CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=24, patch_size=6, hidden_act="quick_gelu"),
            projection_dim=12)
        model = randomize(transformers.CLIPModel(config), seed=4)
        for name in ("model.safetensors", "config.json"):
            (folder / name).unlink()
        model.save_pretrained(folder)
        self.check(model, folder)


class OpenClip(RoundTrip):
    """HPSv2's architecture (OpenCLIP ViT-H-14: GELU, 14-pixel patches, head width 80, argmax text
    pooling) at a tiny size, created and saved by open_clip_torch: dedpo's scorer loads the OpenCLIP
    state dict (its key map) with a transformers CLIPConfig of the same shape, as for HPSv2's
    checkpoint, and gives the same normalised embeddings and HPSv2 score (100 cos)."""

    def test_open_clip_state_dict_opens_in_dedpo_scorer(self):
        import open_clip
        folder = self.work / "hpsv2"
        tokenizer = transformers.CLIPTokenizer.from_pretrained(make_tiny_sd(self.work / "sd", "sd15") / "tokenizer")
        tokenizer.save_pretrained(folder)  # tokenizer.json only, as transformers 5 saves
        # ViT-H-14's open_clip config, narrowed: widths 1280 / 1024 -> 32, 32 / 24 layers -> 2.
        (self.work / "tiny-ViT-H-14.json").write_text(json.dumps({
            "embed_dim": 16,
            "vision_cfg": {"image_size": 28, "layers": 2, "width": 32, "head_width": 8, "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": len(tokenizer), "width": 32, "heads": 4, "layers": 2}}))
        open_clip.add_model_config(self.work / "tiny-ViT-H-14.json")
        model = randomize(open_clip.create_model("tiny-ViT-H-14"), seed=6)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(transformers.CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                             layer_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id),
            vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               image_size=28, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5),
            projection_dim=16).to_dict()))

        prompts = PROMPTS + ["Cafe\u0301 au lait, 2 cups"]
        images = torch.randint(0, 256, (len(prompts), 28, 28, 3), generator=torch.Generator().manual_seed(7),
                               dtype=torch.uint8)  # the model's size: the scorer's resize and crop keep them
        actual = dedpo("scorer", folder, {"images": images,
                                          "prompt_bytes": torch.tensor(list("".join(p + "\n" for p in prompts).encode()),
                                                                       dtype=torch.uint8)}, self.work)
        mean = torch.tensor(open_clip.constants.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.constants.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        pixel_values = (images.permute(0, 3, 1, 2).double() / 255 - mean) / std
        input_ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            image_embeds = model.encode_image(pixel_values.float(), normalize=True)
            text_embeds = model.encode_text(input_ids, normalize=True)
        self.assert_near("image_embeds", actual["image_embeds"], image_embeds)
        self.assert_near("text_embeds", actual["text_embeds"], text_embeds)
        self.assert_near("HPSv2 score (100 cos)", 100 * (actual["image_embeds"] * actual["text_embeds"]).sum(-1),
                         100 * (image_embeds * text_embeds).sum(-1))


# ------------------------------------------------------------------------------------------ tokenizer

WORDS = ("a photo of the cat dog red blue portrait painting landscape astronaut riding horse moon city "
         "night street cyberpunk oil canvas highly detailed 8k trending artstation sharp focus bokeh "
         "cinematic lighting golden hour watercolor sketch anime style photorealistic").split()
UNICODE = ["café", "naïve", "Ærøskøbing", "straße", "ÉCOLE", "İstanbul", "ΑΘΗΝΑ", "Σοφία", "ΟΔΥΣΣΕΥΣ",
           "москва", "ПРИВЕТ", "Երևան", "שלום", "مرحبا", "नमस्ते", "สวัสดี", "서울", "ひらがな", "カタカナ",
           "猫", "东京塔", "ｆｕｌｌｗｉｄｔｈ", "Ⅻ", "①②", "x²", "½", "٣٤", "🐱", "🚀✨", "👩‍🚀", "\u00a0nbsp",
           # decomposed accents and Hangul jamo (NFC composes them), compatibility forms (NFC keeps them:
           # ligatures, fullwidth and halfwidth forms, mathematical letters, circled letters)
           "e\u0301te\u0301", "A\u030angstro\u0308m", "\u1100\u1161\u11a8", "ﬁﬂﬀ", "ＡＢＣ１２３", "ｶﾀｶﾅ", "𝐀𝐁𝐂", "ⒶⓑⒸ",
           # case mappings beyond the simple ones: titlecase digraphs, capital sharp s, Cherokee,
           # Georgian Mtavruli, Deseret, Adlam
           "ǅǈǋ", "ẞ", "ᏣᎳᎩ", "ᲠᲣᲡ", "𐐀𐐁", "𞤀𞤁",
           # emoji sequences: skin tone, flag, keycap, variation selector
           "👍🏽", "🏳️‍🌈", "🇫🇷", "1️⃣", "❤️",
           # invisible and control characters: zero-width joiner / non-joiner / space, BOM, soft hyphen,
           # C0 / C1 controls, the separators Python counts as spaces but White_Space does not
           "a\u200db", "a\u200cb", "a\u200bb", "\ufeffbom", "soft\u00adhyphen", "\x00", "\x07bell", "\x1c\x1d\x1e\x1f",
           "\x7f\x85\x9f", "\u2028\u2029", "\u180e", "\u3000",
           # more scripts: combining marks (Devanagari, Arabic harakat, Thai), Tamil, Georgian, Ethiopic,
           # Tibetan, Mongolian, CJK extension B
           "किताब", "مَرْحَبًا", "ภาษาไทย", "தமிழ்", "ქართული", "ኢትዮጵያ", "བོད", "ᠮᠣᠩᠭᠣᠯ", "𠀀𠀁"]
PUNCTUATION = [",", ".", "!", "?", "!!!", "...", "--", "'", "\"", "(", ")", "[x]", "{y}", "#", "@", "&", "*",
               "/", "\\", ":", ";", "~", "`", "^", "|", "<", ">", "<|endoftext|>", "<|startoftext|>"]
CONTRACTIONS = ["it's", "don't", "we're", "I've", "I'm", "you'll", "he'd", "DON'T", "cat's"]
NUMBERS = ["0", "7", "42", "1999", "3.14", "1,000,000", "-5", "+12", "2024-01-01", "1080p", "16:9", "50%"]
SPACES = [" ", "  ", "\t", "\n", " \n\t "]


def prompt_corpus(count=1200, seed=0):
    """Prompts of every kind the tokenizer meets: empty, whitespace, words, unicode of many scripts,
    punctuation, numbers, contractions, special tokens inside the text, and long ones (truncated)."""
    rng = random.Random(seed)
    corpus = ["", " ", "\n", "!", "!!", "a", "A PHOTO OF A CAT", "<|endoftext|>", "  leading and trailing  "]
    pools = [WORDS] * 4 + [UNICODE, PUNCTUATION, CONTRACTIONS, NUMBERS]
    while len(corpus) < count:
        length = rng.choice([1, 2, 3, 5, 8, 13, 21, 40, 120])
        pieces = []
        for _ in range(length):
            piece = rng.choice(rng.choice(pools))
            if rng.random() < 0.2:
                piece = piece.upper() if rng.random() < 0.5 else piece.capitalize()
            pieces.append(piece)
            pieces.append(rng.choice(SPACES) if rng.random() < 0.15 else ("" if rng.random() < 0.15 else " "))
        corpus.append("".join(pieces))
    return corpus


# Large uniform blocks (CJK ideographs, Hangul syllables, private use, the unassigned planes 3-13,
# 15-16) whose code points all behave alike: a sample of them is enough.
UNIFORM_BLOCKS = [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0x20000, 0xDFFFF),
                  (0xE0200, 0x10FFFF)]


def code_point_corpus(every=False):
    """One prompt per code point, next to a letter, a digit, punctuation and itself, so that its
    normalisation, case mapping and character class all show in the ids: every Unicode scalar value
    with DEDPO_INTEROP_EVERY_CODE_POINT=1 (1,112,064, minutes), else all but 1 in 97 of the uniform
    blocks (94,975). Returns (code points, prompts)."""
    def sampled(c):
        return every or c % 97 == 0 or not any(lo <= c <= hi for lo, hi in UNIFORM_BLOCKS)
    scalars = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and sampled(c)]
    return scalars, [f"{chr(c)}a{chr(c)}1{chr(c)}.{chr(c)}{chr(c)}" for c in scalars]


def trained_clip_tokenizer(corpus, folder):
    """A CLIP tokenizer whose vocabulary is learned on the corpus (about 2,000 merges; the tiny models'
    tokenizers have 11), so that merge ranks decide many ids. Saved twice: folder/json as transformers
    5 saves it (tokenizer.json and tokenizer_config.json only), folder/files as vocab.json + merges.txt."""
    import tokenizers
    base = transformers.CLIPTokenizer().backend_tokenizer  # CLIP's normaliser and pre-tokeniser
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    backend.normalizer, backend.pre_tokenizer = base.normalizer, base.pre_tokenizer
    backend.train_from_iterator(corpus, tokenizers.trainers.BpeTrainer(
        vocab_size=2500, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    transformers.CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=77).save_pretrained(folder / "json")
    (folder / "files").mkdir()
    (folder / "files" / "vocab.json").write_text(json.dumps(model["vocab"]))
    (folder / "files" / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return len(merges)


class Tokenizer(RoundTrip):
    def check(self, folder, corpus=None, reference=None):
        """dedpo's ids equal transformers' CLIPTokenizer's (and `reference`'s: a tokenizers.Tokenizer)."""
        self.assertEqual(self.differences(folder, corpus, reference), [])

    def differences(self, folder, corpus=None, reference=None):
        """The indices of the prompts whose ids differ (the first five are printed)."""
        tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
        corpus = prompt_corpus() if corpus is None else corpus
        (self.work / "prompts.json").write_text(json.dumps(corpus))
        run(tool("DEDPO_INTEROP"), "tokenize", folder, self.work / "prompts.json", self.work / "ids.json")
        ours = json.loads((self.work / "ids.json").read_text())
        padded = tokenizer(corpus, padding="max_length", max_length=77, truncation=True).input_ids
        full = tokenizer(corpus, add_special_tokens=False).input_ids
        if reference is not None:
            self.assertEqual([e.ids for e in reference.encode_batch(corpus, add_special_tokens=False)], full,
                             "tokenizers.Tokenizer.from_file and transformers' CLIPTokenizer agree")
        differ = [i for i in range(len(corpus)) if ours["input_ids"][i] != padded[i] or ours["ids"][i] != full[i]]
        print(f"[interop] {self.id().split('.', 1)[1]} {folder.name}: {len(corpus) - len(differ)} of {len(corpus)} "
              f"prompts with equal ids", flush=True)
        for i in differ[:5]:
            a, b = full[i], ours["ids"][i]
            at = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
            window = slice(max(0, at - 3), at + 4)
            print(f"  {corpus[i][:200]!r}\n    from token {at}: transformers {tokenizer.convert_ids_to_tokens(a[window])}"
                  f"\n    {' ' * len(str(at))}              dedpo        {tokenizer.convert_ids_to_tokens(b[window])}")
        return differ

    def test_ids_equal_on_the_corpus(self):
        folder = make_tiny_sd(self.work / "sdxl", "sdxl")
        for part in ("tokenizer", "tokenizer_2"):  # tokenizer_2 pads with "!"
            with self.subTest(part=part):
                self.check(folder / part)

    def test_ids_equal_on_code_points(self):
        """Equal on every code point Python's Unicode database (14.0 in Python 3.11) assigns. The
        tokenizers library follows Unicode 16, dedpo Debian 12's ICU 72 (Unicode 15.0): code points
        assigned since (Todhri, Garay, CJK extension I, ...) are unassigned to dedpo, so their class
        (punctuation, not letter) and case mapping can differ; they are counted, not failed."""
        import unicodedata
        code_points, corpus = code_point_corpus(every=os.environ.get("DEDPO_INTEROP_EVERY_CODE_POINT") == "1")
        differ = self.differences(make_tiny_sd(self.work / "sd15", "sd15") / "tokenizer", corpus)
        newer = {i for i in differ if unicodedata.category(chr(code_points[i])) == "Cn"}
        print(f"[interop] {len(newer)} of the differing code points are unassigned in Python's Unicode "
              f"{unicodedata.unidata_version}", flush=True)
        self.assertEqual([hex(code_points[i]) for i in differ if i not in newer], [])

    def test_learned_vocabulary_from_tokenizer_json_and_from_vocab_and_merges(self):
        import tokenizers
        corpus = prompt_corpus()
        merges = trained_clip_tokenizer(corpus, self.work / "trained")
        self.assertGreater(merges, 1000)
        json_folder = self.work / "trained" / "json"
        self.assertEqual(sorted(p.name for p in json_folder.iterdir()), ["tokenizer.json", "tokenizer_config.json"])
        with self.subTest(files="tokenizer.json"):
            self.check(json_folder, corpus, tokenizers.Tokenizer.from_file(str(json_folder / "tokenizer.json")))
        with self.subTest(files="vocab.json + merges.txt"):
            self.check(self.work / "trained" / "files", corpus)


if __name__ == "__main__":
    print(f"interop: torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}", flush=True)
    unittest.main(verbosity=2)
