"""Run by tests/test_distributed.py, alone or under torchrun: a small network of stochastic-depth blocks
(cnnlab's stochastic_residual, no BatchNorm) trained for 12 SGD steps with momentum and weight decay, in
float64, on fixed data; writes the final weights and which blocks each step skipped to the file argv[1]."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from cnnlab.models.layers import stochastic_residual
from cnnlab.train import distributed


class SkipBlock(nn.Module):
    def __init__(self, width: int, drop_prob: float):
        super().__init__()
        self.fc, self.drop_prob = nn.Linear(width, width), drop_prob

    @property
    def may_skip_parameters(self) -> bool:
        return self.drop_prob > 0

    def branch(self, x):
        return torch.tanh(self.fc(x))

    def forward(self, x):
        return stochastic_residual(self.branch, x, x, self.drop_prob, self.training)


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), *[SkipBlock(16, 0.5) for _ in range(4)], nn.Linear(16, 3)).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    step_model = distributed.wrap(net, torch.device("cpu"), sync_bn=False)[1] if world > 1 else net
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (12, 16), generator=g)
    skipped = []
    for i in range(12):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(step_model(x[i][rank::world]), y[i][rank::world])
        loss.backward()
        skipped.append([b.fc.weight.grad is None for b in net[1:5]])
        opt.step()
    if rank == 0:
        torch.save({"state": net.state_dict(), "skipped": skipped}, out)
    if world > 1:
        dist.barrier()  # both ranks done before either tears gloo down (a rank leaving early aborted, once, in CI)
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
