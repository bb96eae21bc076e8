"""PyTorch baseline for `cargo bench --bench train_step`: seconds per SGD training step of the same
architectures (pytorch-cifar layout), same batch, same hyper-parameters, on the CPU.

Usage: python3 benches/train_step_torch.py ARCH WIDTH C H W BATCH STEPS THREADS
Prints one line: the median seconds per step (after one warm-up step).
Needs torch (`python3 -m venv venv && venv/bin/pip install torch`); never a dependency of ntk-pipeline.
"""
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet9(nn.Module):
    def __init__(self, cin, width, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        chans = [width, 2 * width, 4 * width, 8 * width]
        blocks, c = [], width
        for i, co in enumerate(chans):
            blocks.append(BasicBlock(c, co, 1 if i == 0 else 2))
            c = co
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(8 * width, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.avg_pool2d(self.layers(out), 4)
        return self.linear(out.flatten(1))


class LeNet(nn.Module):
    def __init__(self, cin, h, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = ((h - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        out = F.relu(self.fc1(out.flatten(1)))
        return self.fc3(F.relu(self.fc2(out)))


class MobileNet(nn.Module):
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, cin, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        layers, c = [], 32
        for co, s in self.cfg:
            layers += [nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, co, 1, 1, 0, bias=False), nn.BatchNorm2d(co), nn.ReLU()]
            c = co
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(1024, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.avg_pool2d(self.layers(out), 2)
        return self.linear(out.flatten(1))


def main():
    arch, width, c, h, w, batch, steps, threads = sys.argv[1:9]
    width, c, h, w, batch, steps, threads = map(int, (width, c, h, w, batch, steps, threads))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = {"resnet9": lambda: ResNet9(c, width), "lenet": lambda: LeNet(c, h), "mobilenet": lambda: MobileNet(c)}[arch]()
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, c, h, w)
    y = torch.arange(batch) % 10
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    print(statistics.median(times))


if __name__ == "__main__":
    main()
