"""Seconds per training step of the same ResNet18 as bfx-trainer, in PyTorch.

The network mirrors bfx_trainer::nn::ResNet layer for layer: 7x7 stride-2
stem without bias, BatchNorm, ReLU, 2x2 max pool, four stages of two basic
blocks (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2; 1x1 projection shortcuts),
global average pooling, Linear(8w, 128) embedding, Linear(128, 10)
classifier; ERM step with AdamW (lr 1e-4, weight decay 0.01) on random data.

Usage: python training_step.py WIDTH BATCH CHANNELS SIZE STEPS NORM THREADS (NORM: bn or in)
Prints one JSON line (median seconds per step over STEPS after 2 warm-up steps,
and per inference forward pass in eval mode without autograd).
"""

import json
import sys
import time

import torch
from torch import nn


def make_norm(kind, channels):
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=True)


class Block(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = make_norm(norm, cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), make_norm(norm, cout))

    def forward(self, x):
        h = torch.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return torch.relu(h + (x if self.down is None else self.down(x)))


class Net(nn.Module):
    def __init__(self, channels, width, classes=10, embedding=128, norm="bn"):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 7, 2, 3, bias=False), make_norm(norm, width), nn.ReLU(), nn.MaxPool2d(2)
        )
        blocks, cin = [], width
        for i in range(4):
            cout = width << i
            for j in range(2):
                blocks.append(Block(cin if j == 0 else cout, cout, 2 if i > 0 and j == 0 else 1, norm))
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.embed = nn.Linear(8 * width, embedding)
        self.head = nn.Linear(embedding, classes)

    def stage_features(self, x):
        """The feature map after each of the four stages."""
        h, out = self.stem(x), []
        for i, block in enumerate(self.stages):
            h = block(h)
            if i % 2 == 1:
                out.append(h)
        return out

    def forward(self, x):
        h = self.stages(self.stem(x)).mean(dim=(2, 3))
        return self.head(self.embed(h))


def main():
    width, batch, channels, size, steps = (int(a) for a in sys.argv[1:6])
    norm, threads = sys.argv[6], int(sys.argv[7])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = Net(channels, width, norm=norm)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    x = torch.randn(batch, channels, size, size)
    y = torch.arange(batch) % 10
    times = []
    for i in range(steps + 2):
        started = time.perf_counter()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        loss.item()
        if i >= 2:
            times.append(time.perf_counter() - started)
    times.sort()
    # Inference: eval mode without autograd, after one untimed pass.
    net.eval()
    inference = []
    with torch.inference_mode():
        for i in range(steps + 1):
            started = time.perf_counter()
            net.embed(net.stages(net.stem(x)).mean(dim=(2, 3))).sum().item()
            if i >= 1:
                inference.append(time.perf_counter() - started)
    inference.sort()
    print(json.dumps({
        "framework": "pytorch " + torch.__version__,
        "network": f"ResNet18 width {width} {'BatchNorm' if norm == 'bn' else 'InstanceNorm'}",
        "input": f"{channels}x{size}x{size}", "batch": batch, "steps": steps,
        "median_s": times[len(times) // 2], "inference_s": inference[len(inference) // 2], "threads": threads,
    }))


if __name__ == "__main__":
    main()
