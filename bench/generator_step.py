"""Seconds per training step of the UNet-AdaIN generator in PyTorch,
mirroring bench/src/generator_step.rs layer for layer: a frozen ResNet18
InstanceNorm encoder (training_step.py's network) gives skips and style
statistics; the decoder upsamples x2 (nearest), concatenates the skip,
convolves 3x3 without bias, applies AdaIN, ReLU; two more x2 levels;
L1 loss to the content image; AdamW over the decoder.

Usage: python generator_step.py WIDTH BATCH CHANNELS SIZE STEPS THREADS
"""

import json
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

from training_step import Net


def style(h):
    mean = h.mean(dim=(2, 3), keepdim=True)
    var = ((h - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    return mean, (var + 1e-5).sqrt()


def adain(h, s):
    mean, std = s
    return F.instance_norm(h, eps=1e-5) * std + mean


def main():
    width, batch, channels, size, steps, threads = (int(a) for a in sys.argv[1:7])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = Net(channels, width, norm="in")
    for p in encoder.parameters():
        p.requires_grad_(False)
    w = width
    conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
    up = nn.ModuleList([conv(12 * w, 4 * w), conv(6 * w, 2 * w), conv(3 * w, w), conv(w, w)])
    out = conv(w, channels)
    params = list(up.parameters()) + list(out.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    content = torch.randn(batch, channels, size, size)
    style_image = torch.randn(batch, channels, size, size)
    times = []
    for i in range(steps + 2):
        started = time.perf_counter()
        opt.zero_grad()
        with torch.no_grad():
            skips = encoder.stage_features(content)
            styles = [style(f) for f in encoder.stage_features(style_image)]
        h = skips[3]
        for level, c in enumerate(up):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            if level < 3:
                h = torch.cat([h, skips[2 - level]], dim=1)
                h = torch.relu(adain(c(h), styles[2 - level]))
            else:
                h = torch.relu(c(h))
        generated = out(F.interpolate(h, scale_factor=2, mode="nearest"))
        loss = (generated - content).abs().mean()
        loss.backward()
        opt.step()
        loss.item()
        if i >= 2:
            times.append(time.perf_counter() - started)
    times.sort()
    print(json.dumps({
        "framework": "pytorch " + torch.__version__,
        "network": f"IST generator (ResNet18 IN width {width} + UNet-AdaIN decoder)",
        "input": f"{channels}x{size}x{size}", "batch": batch, "steps": steps,
        "median_s": times[len(times) // 2], "threads": threads,
    }))


if __name__ == "__main__":
    main()
