"""The loop a CIFAR-10 user would otherwise run: that of akamaster/pytorch_resnet_cifar10 (Yerlan Idelbayev's
"proper" ResNets for CIFAR-10, the most used ResNet-20 in PyTorch), written out plainly:

* ResNet-20 of He et al. 2016, Sec. 4.2, defined here: 3x3 convolution, BatchNorm, ReLU basic blocks of 16, 32
  and 64 channels, three per stage; the shortcut is the identity or, where a stage halves the map and doubles
  the width, option A: ``x[:, :, ::2, ::2]`` zero-padded in channels (a lambda layer with ``F.pad``, half the
  new channels before and half after); Kaiming-normal weights of the convolutions and the linear layer;
  global average pooling, a linear layer. 269,722 parameters (Table 6: 0.27M).
* torchvision transforms applied image by image to PIL images: ``RandomHorizontalFlip``, ``RandomCrop(32, 4)``,
  ``ToTensor``, ``Normalize`` with ImageNet's mean and std (as the original does);
* a ``DataLoader`` of batch 128, shuffled, ``--workers`` processes, pinned memory;
* SGD lr 0.1, momentum 0.9, weight decay 1e-4 (on every parameter), MultiStepLR at epochs 100 and 150;
  fp32, NCHW, cross-entropy; each step reads the loss and the batch's top-1 back (``loss.item()``), as the
  original's meters do; ``cudnn.benchmark`` on a GPU.

    python benchmarks/peers/akamaster_cifar.py [--data-dir DIR] [--model resnet20|vgg_cifar] [--device cpu|cuda]
        [--warmup 10] [--steps 50] [--epochs E] [--workers 2] [--batch 128] [--json OUT]

Data: with ``DIR/cifar-10-batches-py`` (or ``DIR/cifar-10/cifar-10-batches-py``, cnnlab's layout) the
official pickles through ``torchvision.datasets.CIFAR10``; else the JPEG copy ``DIR/cifar-10/cifar-10-jpg.tar.gz``
(or ``--data-dir`` naming the .tar.gz itself), decoded once with Pillow into an N x 32 x 32 x 3 uint8 array and
a list of labels, which is how torchvision's CIFAR10 holds its data; ``__getitem__`` then does what
torchvision's does (``Image.fromarray``, then the transform). So the per-image PIL work is the original's, and
the decoding, which the original never does, is timed apart (``decode_seconds``) and charged to nothing.

Measures: ``--warmup`` untimed steps, then ``--steps`` timed steps (data loading waits included, as a user
waits for them); one line with the images/s of the timed steps. Or ``--epochs E``: whole epochs, each
followed by the test set, one line per epoch with its top-1 and the seconds since the process started (for
time to accuracy). ``--model vgg_cifar`` runs the same loop on ``cnnlab.create_model("vgg_cifar")``: the loop
is what is compared, not the network. ``--train-limit N`` decodes and trains on N training images only,
spread over the classes (for tiny checks). ``--json`` writes the figures atomically.

Departures from the original: no ``DataParallel`` wrapper (one device; on one GPU it only adds a scatter), no
checkpoint files, and the printing every 50 batches is left out. Its default is 4 workers; 2 here.
"""

import time

START = time.perf_counter()  # before the imports: epochs are timed from the start of the process

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # option A: every second pixel, planes // 4 zero channels on each side (16 -> 32, 32 -> 64)
            pad = planes // 4
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1)  # N x 16 x 32 x 32
        self.layer2 = self._make_layer(32, num_blocks[1], 2)  # N x 32 x 16 x 16
        self.layer3 = self._make_layer(64, num_blocks[2], 2)  # N x 64 x 8 x 8
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes, blocks, stride):
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size(3))
        return self.linear(out.view(out.size(0), -1))


def resnet20(num_classes=10):
    return ResNet([3, 3, 3], num_classes)


class JpegTarCIFAR10(torch.utils.data.Dataset):
    """CIFAR-10 from a tar of ``train|test/<class>/NNNN.jpg``, held as torchvision's CIFAR10 holds the pickles:
    ``data`` (N x 32 x 32 x 3 uint8), ``targets`` (a list of ints), ``classes`` (the folder names, sorted)."""

    def __init__(self, path, train=True, transform=None, limit=None):
        split = "train" if train else "test"
        members = []
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                parts = m.name.strip("./").split("/")
                if m.isfile() and len(parts) == 3 and parts[0] == split and parts[2].endswith(".jpg"):
                    members.append((parts[1], parts[2], tar.extractfile(m).read()))
        if not members:
            raise SystemExit(f"{path} holds no {split}/<class>/*.jpg images")
        members.sort(key=lambda m: (m[0], m[1]))
        if limit:  # every k-th image: the classes stay mixed
            members = members[:: max(1, len(members) // limit)][:limit]
        self.classes = sorted({c for c, _, _ in members})
        index = {c: i for i, c in enumerate(self.classes)}
        self.data = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for _, _, b in members])
        self.targets = [index[c] for c, _, _ in members]
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img, target = Image.fromarray(self.data[i]), self.targets[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def load_data(data_dir, train, transform, limit=None):
    """The split as the original reads it (torchvision's CIFAR10 on the pickles) or from the JPEG copy; and
    what it was and the seconds spent decoding it."""
    data_dir = Path(data_dir)
    for root in (data_dir, data_dir / "cifar-10"):
        if (root / "cifar-10-batches-py").is_dir():
            t = time.perf_counter()
            ds = datasets.CIFAR10(str(root), train=train, transform=transform, download=False)
            if limit:
                keep = np.arange(0, len(ds.data), max(1, len(ds.data) // limit))[:limit]
                ds.data, ds.targets = ds.data[keep], [ds.targets[i] for i in keep]
            return ds, "cifar10 (official pickles, torchvision CIFAR10)", time.perf_counter() - t
    tar = data_dir if data_dir.is_file() else data_dir / "cifar-10" / "cifar-10-jpg.tar.gz"
    if not tar.is_file():
        raise SystemExit(f"no CIFAR-10 under {data_dir}: neither cifar-10-batches-py/ nor {tar}")
    t = time.perf_counter()
    ds = JpegTarCIFAR10(tar, train=train, transform=transform, limit=limit)
    return ds, f"cifar10_jpeg ({tar.name}, decoded once with Pillow)", time.perf_counter() - t


class Meter:
    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value, n):
        self.sum += value * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(1, self.count)


def train_step(model, criterion, optimizer, x, y, device, losses, top1):
    y = y.to(device, non_blocking=True)
    x = x.to(device)
    output = model(x)
    loss = criterion(output, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.update(loss.item(), x.size(0))
    top1.update((output.argmax(1) == y).float().mean().item() * 100.0, x.size(0))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(model, criterion, optimizer, loader, device, warmup, steps):
    """``warmup`` steps, then the images/s of ``steps`` more (over as many epochs of the loader as needed)."""
    model.train()
    losses, top1 = Meter(), Meter()
    done, images, t0 = 0, 0, None
    while True:
        for x, y in loader:
            if done == warmup:
                sync(device)
                t0 = time.perf_counter()
            train_step(model, criterion, optimizer, x, y, device, losses, top1)
            done += 1
            images += x.size(0) if done > warmup else 0
            if done == warmup + steps:
                sync(device)
                seconds = time.perf_counter() - t0
                return {"images": images, "seconds": seconds, "images_per_s": images / seconds,
                        "train_loss": losses.avg, "train_top1": top1.avg}


def validate(model, loader, device):
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device, non_blocking=True)
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    return 100.0 * correct / total


def write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("CNNLAB_DATA_DIR", "./data"))
    p.add_argument("--model", choices=["resnet20", "vgg_cifar"], default="resnet20")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--epochs", type=int, default=0, help="instead: whole epochs, the test set after each")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--train-limit", type=int, default=0, help="train on this many images only (tiny checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    train_tf = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, 4),
                                   transforms.ToTensor(), normalize])
    train_set, source, decode_s = load_data(args.data_dir, True, train_tf, args.train_limit or None)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch, shuffle=True,
                                               num_workers=args.workers, pin_memory=True)
    if args.model == "resnet20":
        model = resnet20()
    else:
        import cnnlab

        model = cnnlab.create_model(args.model)
    model = model.to(device)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    result = {"peer": "akamaster_cifar", "model": args.model, "device": str(device), "batch": args.batch,
              "workers": args.workers, "data": source, "train_images": len(train_set),
              "decode_seconds": decode_s, "params": sum(p.numel() for p in model.parameters()),
              "torch": torch.__version__}

    if args.epochs:
        test_set, _, test_decode_s = load_data(args.data_dir, False, transforms.Compose([transforms.ToTensor(),
                                                                                         normalize]))
        result["decode_seconds"] += test_decode_s
        val_loader = torch.utils.data.DataLoader(test_set, batch_size=128, shuffle=False,
                                                 num_workers=args.workers, pin_memory=True)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[100, 150])
        result["epochs"] = []
        for epoch in range(1, args.epochs + 1):
            t0 = time.perf_counter()
            r = timed_steps(model, criterion, optimizer, train_loader, device, 0, len(train_loader))
            scheduler.step()
            top1 = validate(model, val_loader, device)
            elapsed = time.perf_counter() - START
            result["epochs"].append({"epoch": epoch, "test_top1": top1, "train_loss": r["train_loss"],
                                     "seconds": time.perf_counter() - t0, "images_per_s": r["images_per_s"],
                                     "elapsed": elapsed})
            print(f"epoch {epoch} test top-1 {top1:.2f}% train {r['images_per_s']:,.0f} img/s "
                  f"elapsed {elapsed:.1f}s", flush=True)
        result["images_per_s"] = result["epochs"][-1]["images_per_s"]
    else:
        r = timed_steps(model, criterion, optimizer, train_loader, device, args.warmup, args.steps)
        result.update(warmup=args.warmup, steps=args.steps, **r)
        print(f"akamaster {args.model} {device}: {r['images_per_s']:,.1f} images/s over {args.steps} timed steps "
              f"(batch {args.batch}, {args.workers} workers, after {args.warmup} warm-up steps; decoding the data "
              f"took {decode_s:.1f}s, not counted)", flush=True)
    result["elapsed"] = time.perf_counter() - START
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
