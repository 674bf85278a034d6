#!/usr/bin/env python3
"""Time the official PyTorch SDSeg code on this CPU, for docs/speed.md (not run by CI).

The official repository (lin-tianyu/Stable-Diffusion-Seg) is not part of this project: check it
out anywhere and pass its root with --official. Nothing of it is modified; the imports SDSeg
inference never uses are stubbed as in testdata/fixtures/make_fixtures.py (which this reuses).
Needs torch, omegaconf, einops, numpy (and nibabel + scipy for `volume`), in a throwaway venv.

    official_pytorch.py slices --official DIR [--model binary|cls9|cls14] [--batch 1,4]
                               [--dtype f32,bf16] [--iters 3] [--warmup 1] [--threads 2]
    official_pytorch.py volume --official DIR --nifti CT.nii.gz [--slices 20] [--dtype f32]
    official_pytorch.py checkpoint --official DIR [--model binary] --out FILE.ckpt

`slices` prints ms per slice per stage like `sdseg-volume bench` (median of --iters after
--warmup), bf16 under torch.autocast("cpu", dtype=torch.bfloat16). `volume` times the official
scripts/slice2seg.py-style loop on a NIfTI volume: per slice (batch 1) the BTCV window
[-125, 275] HU, scaling to [-1, 1], resize to 256² (torch bilinear), three channels, one
single-step inference, the mask resized back (nearest); then the NIfTI written with nibabel.
`--slices N` times the first N slices and extrapolates to the whole volume (said so in the
output). `checkpoint` writes the full-size model with its default random init as a Lightning
`.ckpt` ({"state_dict": ...}), the file `sdseg-volume run --weights` reads.
"""

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "testdata", "fixtures"))
import make_fixtures  # noqa: E402  (install_stubs, import_official)

YAMLS = {
    "binary": ("configs/SDSeg/sts3d-ldm-kl-8-concat-mode.yaml", 2),
    "cls9": ("configs/SDSeg/synapse-cls9-ldm-kl-8-finetune.yaml", 9),
    "cls14": ("configs/SDSeg/synapse-cls14-ldm-kl-8.yaml", 14),
}


def build(args):
    import torch

    OmegaConf, instantiate_from_config, _, slice2seg = make_fixtures.import_official(
        args.official, args.threads
    )
    yaml, num_classes = YAMLS[args.model]
    config = OmegaConf.load(os.path.join(args.official, yaml))
    for section in (config.model.params, config.model.params.cond_stage_config.params,
                    config.model.params.first_stage_config.params):
        section.pop("ckpt_path", None)
    torch.manual_seed(0)
    model = instantiate_from_config(config.model).eval()
    return model, num_classes, slice2seg


def one_step(model, image, noise, num_classes):
    """The official single step (SDSeg.log_dice, direct sampler), timed per stage."""
    import torch

    B = image.shape[0]
    times = {}
    t = torch.full((B,), model.num_timesteps - 1, dtype=torch.long)
    t0 = time.perf_counter()
    cond = model.get_learned_conditioning(image)
    times["cond_encoder"] = time.perf_counter() - t0
    classes = [None] if num_classes == 2 else list(range(num_classes))
    unet = latent = dec = 0.0
    outs = []
    for cls in classes:
        y = None if cls is None else torch.full((B,), cls, dtype=torch.long)
        c = dict(c_concat=[cond], c_crossattn=[y])
        t1 = time.perf_counter()
        eps = model.apply_model(noise, t, c)
        t2 = time.perf_counter()
        z0 = model.predict_start_from_noise(noise, t, noise=eps)
        t3 = time.perf_counter()
        outs.append(model.decode_first_stage(z0))
        t4 = time.perf_counter()
        unet, latent, dec = unet + t2 - t1, latent + t3 - t2, dec + t4 - t3
    times.update(unet=unet, latent_estimate=latent, decoder=dec)
    if num_classes == 2:
        x = torch.clamp((outs[0] + 1.0) / 2.0, min=0.0, max=1.0).mean(dim=1)
        labels = (x > 0.5).to(torch.uint8)
    else:
        logits = torch.stack([(-o if k == 0 else o).mean(dim=1) for k, o in enumerate(outs)], 1)
        labels = logits.softmax(dim=1).argmax(dim=1).to(torch.uint8)
    return times, labels


def autocast(dtype):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def cmd_slices(args):
    import torch

    model, num_classes, _ = build(args)
    for dtype in args.dtype.split(","):
        for batch in [int(b) for b in args.batch.split(",")]:
            g = torch.Generator().manual_seed(1)
            image = torch.rand((batch, 3, 256, 256), generator=g) * 2 - 1
            noise = torch.randn((batch, 4, 32, 32), generator=g)
            runs = []
            with torch.no_grad(), model.ema_scope(), autocast(dtype):
                for i in range(args.warmup + args.iters):
                    times, _ = one_step(model, image, noise, num_classes)
                    if i >= args.warmup:
                        runs.append(times)
            med = {k: 1e3 * statistics.median(r[k] for r in runs) / batch for k in runs[0]}
            med["total"] = sum(med.values())
            print(json.dumps(dict(model=args.model, dtype=dtype, batch_size=batch,
                                  threads=torch.get_num_threads(), torch=torch.__version__,
                                  ms_per_slice=med, peak_rss_mb=rss_mb())), flush=True)


def cmd_volume(args):
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F

    t_start = time.perf_counter()
    model, num_classes, slice2seg = build(args)
    t_model = time.perf_counter()
    img = nib.load(args.nifti)
    hu = np.asarray(img.dataobj, dtype=np.float32)
    nx, ny, nz = hu.shape
    n = min(args.slices or nz, nz)
    out = np.zeros(hu.shape, dtype=np.uint8)
    g = torch.Generator().manual_seed(0)
    in_model = 0.0
    with torch.no_grad(), model.ema_scope(), autocast(args.dtype):
        # One warm-up step (oneDNN picks and JIT-compiles its kernels on the first call), as
        # `sdseg-volume bench --warmup 1`; a whole-volume run amortises it over its slices.
        one_step(model, torch.zeros((1, 3, 256, 256)), torch.zeros((1, 4, 32, 32)), num_classes)
    t_loop = time.perf_counter()
    with torch.no_grad(), model.ema_scope(), autocast(args.dtype):
        for k in range(n):
            x = np.clip(hu[:, :, k], -125.0, 275.0)
            x = (x + 125.0) / 400.0 * 2.0 - 1.0
            x = torch.from_numpy(x)[None, None]
            x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)[0, 0]
            x = x[..., None].repeat(1, 1, 3)
            image = slice2seg.prepare_for_first_stage(x)
            noise = torch.randn((1, 4, 32, 32), generator=g)
            t0 = time.perf_counter()
            _, labels = one_step(model, image, noise, num_classes)
            in_model += time.perf_counter() - t0
            lab = F.interpolate(labels[None].float(), size=(nx, ny), mode="nearest")[0, 0]
            out[:, :, k] = lab.numpy().astype(np.uint8)
    t_done = time.perf_counter()
    per_slice = (t_done - t_loop) / n
    nib.save(nib.Nifti1Image(out, img.affine), args.out)
    t_end = time.perf_counter()
    whole = (t_model - t_start) + per_slice * nz + (t_end - t_done)
    print(json.dumps(dict(
        model=args.model, dtype=args.dtype, threads=torch.get_num_threads(),
        shape=[nx, ny, nz], slices_timed=n, extrapolated=n < nz,
        model_build_s=t_model - t_start, s_per_slice=per_slice,
        model_share=in_model / (t_done - t_loop), write_s=t_end - t_done,
        whole_volume_s=whole, peak_rss_mb=rss_mb())), flush=True)


def cmd_checkpoint(args):
    import torch

    model, _, _ = build(args)
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("slices", "volume", "checkpoint"):
        s = sub.add_parser(name)
        s.add_argument("--official", required=True)
        s.add_argument("--model", choices=sorted(YAMLS), default="binary")
        s.add_argument("--threads", type=int, default=2)
        if name == "slices":
            s.add_argument("--batch", default="1,4")
            s.add_argument("--dtype", default="f32,bf16")
            s.add_argument("--iters", type=int, default=3)
            s.add_argument("--warmup", type=int, default=1)
        elif name == "volume":
            s.add_argument("--nifti", required=True)
            s.add_argument("--out", default=os.devnull + ".nii.gz")
            s.add_argument("--slices", type=int, default=0)
            s.add_argument("--dtype", default="f32")
        else:
            s.add_argument("--out", required=True)
    args = p.parse_args()
    if args.cmd == "volume" and args.out.startswith(os.devnull):
        args.out = "/tmp/official-volume-labels.nii.gz"
    dict(slices=cmd_slices, volume=cmd_volume, checkpoint=cmd_checkpoint)[args.cmd](args)


if __name__ == "__main__":
    main()
