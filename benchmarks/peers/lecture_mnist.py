"""The loop a student of the course writes for MNIST: the lecture's LeNet-5 (ReLU, max-pooling, a linear
output), torchvision's ``datasets.MNIST`` with ``Pad(2)``, ``ToTensor`` and ``Normalize``, a ``DataLoader``
of batch 64 (shuffled, no workers), SGD lr 0.01 with momentum 0.9, fp32, the test set after every epoch.

    python benchmarks/peers/lecture_mnist.py ROOT [--epochs 10] [--seed 0] [--stop-at 99.0] [--device cpu|cuda]

ROOT holds ``MNIST/raw/`` as torchvision downloads it. It is the peer of ``benchmarks/mnist_time_to_99.py``,
which starts it as its own process and times it from the start of the process; it prints one line per
epoch and stops at the first test accuracy of ``--stop-at`` or more. ``--device cuda`` moves the model and each
batch to the GPU with ``.to(device)``, as a student would. Deliberately nothing of cnnlab.
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import datasets, transforms


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-at", type=float, default=99.0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    tf = transforms.Compose([transforms.Pad(2), transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(args.root, train=True, download=False, transform=tf)
    test_set = datasets.MNIST(args.root, train=False, download=False, transform=tf)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
    model = LeNet5().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - t0
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                x, y = x.to(device), y.to(device)
                correct += (model(x).argmax(1) == y).sum().item()
        top1 = 100.0 * correct / len(test_set)
        print(f"epoch {epoch} test top-1 {top1:.2f}% train {seconds:.1f}s", flush=True)
        if top1 >= args.stop_at:
            break


if __name__ == "__main__":
    main()
