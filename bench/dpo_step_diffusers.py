"""The Python reference side of bench/dpo_step_side_by_side.py: one Diffusion-DPO training step of a
diffusers UNet2DConditionModel built from a config.json, the same step as dedpo_bench_dpo_step.

Trainable UNet forward + backward on 2P noisy latents (both sides of P pairs, shared timestep and
noise per pair), frozen reference forward on the same 2P under inference mode, the DPO loss with
beta, gradient-norm clipping at 1.0 and an AdamW step. Random weights and inputs (77-token
conditioning; an SDXL-layout config also gets pooled text_embeds and time_ids (R, R, 0, 0, R, R),
R = 8 * latent). --dtype bf16: autocast to bfloat16 around both forwards, the reference stored in
bfloat16, the trainable UNet in float32 (diffusers' DPO training script does the same).

Prints one JSON line (the driver's protocol, shared with `dedpo_bench_dpo_step --json`).
"""
import argparse
import copy
import ctypes
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from diffusers import DDPMScheduler, UNet2DConditionModel


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="diffusers UNet config.json")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--beta", type=float, default=5000.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--checkpointing", type=int, choices=[0, 1], default=0)
    parser.add_argument("--json", action="store_true", help="accepted for symmetry with the C++ side")
    args = parser.parse_args(argv)
    if args.latent <= 0 or args.pairs <= 0 or args.steps <= 0 or args.warmup < 0:
        parser.error("--latent, --pairs and --steps must be > 0, --warmup >= 0")
    return args


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device, dtype, runs=10):
    """Median rate of a square matmul in the step's compute dtype, before any model exists: the
    faster of torch.mm and, in float32 on a CPU, oneDNN's matmul (ATen's MKL path reaches about
    half of oneDNN's rate on AMD CPUs), as dedpo_bench_dpo_step measures it."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def rate(matmul):
        matmul()
        synchronize(device)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            matmul()
            synchronize(device)
            times.append(time.perf_counter() - start)
        return 2.0 * size**3 / statistics.median(times) / 1e9

    peak = rate(lambda: torch.mm(a, b))
    if device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        peak = max(peak, rate(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")))
    return peak


def reset_peak_memory(device):
    """Peak memory from here on: the CUDA allocator's, or the process's resident set (VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    compute_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak = matmul_peak_gflops(device, compute_dtype)

    torch.manual_seed(0)
    with open(args.config) as f:
        config = json.load(f)
    unet = UNet2DConditionModel.from_config(config).to(device)
    reference = copy.deepcopy(unet).requires_grad_(False).eval()
    if args.dtype == "bf16":
        reference.to(torch.bfloat16)
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

    pairs, n, channels, latent = args.pairs, 2 * args.pairs, unet.config.in_channels, args.latent
    a = torch.randn(pairs, channels, latent, latent, device=device)
    b = torch.randn(pairs, channels, latent, latent, device=device)
    context = torch.randn(n, 77, unet.config.cross_attention_dim, device=device)
    added = None
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        side = float(8 * latent)
        added = {"text_embeds": torch.randn(n, pooled, device=device),
                 "time_ids": torch.tensor([side, side, 0.0, 0.0, side, side], device=device).expand(n, 6)}
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step():
        t = torch.randint(0, scheduler.config.num_train_timesteps, (pairs,), device=device)
        noise = torch.randn(pairs, channels, latent, latent, device=device)
        x0, noise2, t2 = torch.cat([a, b]), torch.cat([noise, noise]), torch.cat([t, t])
        noisy = scheduler.add_noise(x0, noise2, t2)
        with autocast():
            pred = unet(noisy, t2, context, added_cond_kwargs=added).sample
        err = (pred.float() - noise2).pow(2).mean(dim=(1, 2, 3))
        with torch.inference_mode(), autocast():
            ref_pred = reference(noisy, t2, context, added_cond_kwargs=added).sample
            ref = (ref_pred.float() - noise2).pow(2).mean(dim=(1, 2, 3))
        diff = (err[:pairs] - ref[:pairs]) - (err[pairs:] - ref[pairs:])
        loss = -F.logsigmoid(-0.5 * args.beta * diff).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()

    # FLOPs of one forward on the 2P images, counted by torch's own counter.
    with torch.no_grad(), autocast(), FlopCounterMode(display=False) as counter:
        unet(torch.randn(n, channels, latent, latent, device=device),
             torch.full((n,), 500, device=device), context, added_cond_kwargs=added)
    forward_flops = counter.get_total_flops()

    reset_peak_memory(device)
    for _ in range(args.warmup):
        step()
    times_ms, cpu_ms = [], []  # wall clock; CPU time of all threads (robust to a loaded machine)
    for _ in range(args.steps):
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        synchronize(device)
        times_ms.append((time.perf_counter() - start) * 1e3)
        cpu_ms.append((time.process_time() - cpu_start) * 1e3)
    print(json.dumps({
        "side": "diffusers",
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in unet.parameters()),
        "matmul_peak_gflops": peak,
        "step_gflop": 4.0 * forward_flops / 1e9,
        "ms": times_ms,
        "cpu_ms": cpu_ms,
        "peak_mib": peak_memory_mib(device),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
