#!/usr/bin/env python3
"""Training memory of a diffusers UNet2DConditionModel config, by counting (docs/sdxl.md).

    python3 scripts/unet_memory.py ../shared/bench/unet_sdxl.json --latent 128 [--images 2]

Parameters, gradients and optimiser state are counted exactly from the architecture (the same
layer shapes as backbones/stable_diffusion, checked against the config's known parameter count).
Activations kept for the backward are an estimate per image, fp32, attention computed as
softmax(QK^T)V with the probabilities stored (this project's CPU attention); see docs/sdxl.md for
the per-layer count and its calibration against dedpo_bench_dpo_step's measured peak.
"""
import argparse
import json

TEXT_TOKENS = 77


def listify(value, n):
    return list(value) if isinstance(value, list) else [value] * n


class Count:
    def __init__(self):
        self.tensors = []  # (shape, module path)

    def linear(self, path, fan_in, fan_out, bias=True):
        self.tensors.append(((fan_out, fan_in), path + ".weight"))
        if bias:
            self.tensors.append(((fan_out,), path + ".bias"))

    def conv(self, path, c_in, c_out, k):
        self.tensors.append(((c_out, c_in, k, k), path + ".weight"))
        self.tensors.append(((c_out,), path + ".bias"))

    def norm(self, path, c):
        self.tensors += [((c,), path + ".weight"), ((c,), path + ".bias")]


def build(cfg):
    """Parameter shapes, and per-image activation floats as a function of the latent side."""
    boc = cfg["block_out_channels"]
    n = len(boc)
    lpb = listify(cfg.get("layers_per_block", 2), n)
    tl = listify(cfg.get("transformer_layers_per_block", 1), n)
    heads = listify(cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8), n)
    ctx = listify(cfg.get("cross_attention_dim", 1280), n)
    temb = cfg.get("time_embedding_dim") or 4 * boc[0]
    c = Count()
    act = []  # (floats per image as a function of the latent side, block name)

    def resnet(path, ci, co, level):
        c.norm(path + ".norm1", ci)
        c.conv(path + ".conv1", ci, co, 3)
        c.linear(path + ".time_emb_proj", temb, co)
        c.norm(path + ".norm2", co)
        c.conv(path + ".conv2", co, co, 3)
        if ci != co:
            c.conv(path + ".conv_shortcut", ci, co, 1)
        # norm1 in, silu in, conv1 in; norm2 in, silu in, conv2 in
        return lambda side: (3 * ci + 3 * co) * tokens(side, level)

    def transformer(path, ch, layers, h, cross, level):
        c.norm(path + ".norm", ch)
        c.linear(path + ".proj_in", ch, ch)
        for j in range(layers):
            b = f"{path}.transformer_blocks.{j}"
            for k in (1, 2, 3):
                c.norm(f"{b}.norm{k}", ch)
            for a, kv in (("attn1", ch), ("attn2", cross)):
                c.linear(f"{b}.{a}.to_q", ch, ch, bias=False)
                c.linear(f"{b}.{a}.to_k", kv, ch, bias=False)
                c.linear(f"{b}.{a}.to_v", kv, ch, bias=False)
                c.linear(f"{b}.{a}.to_out.0", ch, ch)
            c.linear(f"{b}.ff.net.0.proj", ch, 8 * ch)
            c.linear(f"{b}.ff.net.2", 4 * ch, ch)
        c.linear(path + ".proj_out", ch, ch)
        # per token and layer: 28 C (norm in/out, q k v, attention outputs, GEGLU 8C + 4C + 4C)
        # + the stored softmax probabilities, H x (tokens + 77); + 3 C for norm / proj_in / proj_out
        return lambda side: tokens(side, level) * (
            3 * ch + layers * (28 * ch + h * (tokens(side, level) + TEXT_TOKENS)))

    def tokens(side, level):
        return (side >> level) ** 2

    c.conv("conv_in", cfg.get("in_channels", 4), boc[0], cfg.get("conv_in_kernel", 3))
    c.linear("time_embedding.linear_1", boc[0], temb)
    c.linear("time_embedding.linear_2", temb, temb)
    if cfg.get("addition_embed_type") == "text_time":
        c.linear("add_embedding.linear_1", cfg["projection_class_embeddings_input_dim"], temb)
        c.linear("add_embedding.linear_2", temb, temb)
    out = boc[0]
    for i in range(n):
        blk, parts = f"down_blocks.{i}", []
        ci, out = out, boc[i]
        for j in range(lpb[i]):
            parts.append(resnet(f"{blk}.resnets.{j}", ci if j == 0 else out, out, i))
            if cfg["down_block_types"][i] == "CrossAttnDownBlock2D":
                parts.append(transformer(f"{blk}.attentions.{j}", out, tl[i], heads[i], ctx[i], i))
        if i + 1 < n:
            c.conv(f"{blk}.downsamplers.0.conv", out, out, 3)
            parts.append(lambda side, o=out, lv=i: o * tokens(side, lv))
        act.append((parts, blk))
    parts = [resnet("mid_block.resnets.0", boc[-1], boc[-1], n - 1),
             transformer("mid_block.attentions.0", boc[-1], tl[-1], heads[-1], ctx[-1], n - 1),
             resnet("mid_block.resnets.1", boc[-1], boc[-1], n - 1)]
    act.append((parts, "mid_block"))
    out = boc[-1]
    for i in range(n):
        r = n - 1 - i
        blk, parts = f"up_blocks.{i}", []
        prev, out, skip_in = out, boc[r], boc[max(r - 1, 0)]
        for j in range(lpb[r] + 1):
            skip = skip_in if j == lpb[r] else out
            parts.append(resnet(f"{blk}.resnets.{j}", (prev if j == 0 else out) + skip, out, r))
            if cfg["up_block_types"][i] == "CrossAttnUpBlock2D":
                parts.append(transformer(f"{blk}.attentions.{j}", out, tl[r], heads[r], ctx[r], r))
        if i + 1 < n:
            c.conv(f"{blk}.upsamplers.0.conv", out, out, 3)
            parts.append(lambda side, o=out, lv=r: o * tokens(side, lv) * 4)  # upsampled conv input
        act.append((parts, blk))
    c.norm("conv_norm_out", boc[0])
    c.conv("conv_out", boc[0], cfg.get("out_channels", 4), cfg.get("conv_out_kernel", 3))
    blocks = [(lambda side, ps=ps: sum(p(side) for p in ps), name) for ps, name in act]
    # Block boundaries kept under per-block checkpointing: the inputs and skip states.
    skips = lambda side: sum(boc[i] * tokens(side, i) * (lpb[i] + 2) for i in range(n))
    return c.tensors, blocks, skips


def numel(shape):
    total = 1
    for d in shape:
        total *= d
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--latent", type=int, default=128)
    parser.add_argument("--images", type=int, default=2, help="images per step (2 per pair)")
    parser.add_argument("--calibration", type=float, default=1.0,
                        help="measured / estimated activations (dedpo_bench_dpo_step)")
    args = parser.parse_args()
    cfg = json.load(open(args.config))
    tensors, blocks, skips = build(cfg)
    params = sum(numel(s) for s, _ in tensors)
    # The trainer's Adafactor: tensors of >= 2 dims keep row means over the last dim and column
    # means over the second-to-last; 1-dim tensors a full second moment; no first moment.
    adafactor = sum(numel(s[:-1]) + numel(s[:-2]) * s[-1] if len(s) >= 2 else numel(s) for s, _ in tensors)
    lora_per_rank = sum(s[0] + s[1] for s, p in tensors
                        if p.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")))
    full = sum(f(args.latent) for f, _ in blocks) * args.images * args.calibration
    largest = max(blocks, key=lambda b: b[0](args.latent))
    ckpt = (largest[0](args.latent) + skips(args.latent)) * args.images * args.calibration
    gib = 1024 ** 3
    print(f"parameters {params:,}; Adafactor state {adafactor:,} floats; LoRA (to_q,k,v,out) {lora_per_rank:,} x rank")
    print(f"activations, {args.images} images at {args.latent}x{args.latent} latents, fp32: "
          f"{full * 4 / gib:.1f} GiB; per-block checkpointing: {ckpt * 4 / gib:.1f} GiB "
          f"(largest block {largest[1]}); bf16 compute halves both")
    print(f"per block (GiB, {args.images} images): " +
          ", ".join(f"{name} {f(args.latent) * args.images * args.calibration * 4 / gib:.1f}" for f, name in blocks))


if __name__ == "__main__":
    main()
