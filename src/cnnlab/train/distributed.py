"""Data-parallel training on PyTorch's own engine: torch.distributed + DistributedDataParallel, launched by
``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT for every worker).

Semantics (see docs/distributed.md):

* ``--batch-size`` is the global batch; each of the W ranks gets the rows ``r::W`` of every global batch,
  so the order of batches and the learning-rate schedule are the single-process ones, and with a mean loss
  and DDP's gradient averaging over equal shards every update equals the single-process update up to the
  order of float additions.
* Only rank 0 writes files or prints; metrics are sums reduced over all ranks.
* The backend is NCCL when each worker has a GPU, gloo on CPU. Every wait is bounded by a timeout
  (``CNNLAB_DIST_TIMEOUT`` seconds, default 300), so a missing peer or an unreachable rendezvous ends the
  run with an error instead of a hang.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cnnlab.errors import CnnlabError
from cnnlab.train.config import TrainConfig
from cnnlab.platform import resolve_device

DEFAULT_TIMEOUT_S = 300.0

LOOPBACK = "127.0.0.1"
_sockets: list[socket.socket] = []  # bound listening sockets, kept open for the stores that serve on them
_ARGS = ("world_size", "is_master", "timeout", "wait_for_workers", "multi_tenant", "master_listen_fd", "use_libuv")


class LoopbackTCPStore(dist.TCPStore):
    """A TCPStore whose server, if it is one, listens on 127.0.0.1 only."""

    def __init__(self, host_name: str, port: int, *args, **kwargs):
        kw = {**dict(zip(_ARGS, args)), **kwargs}
        if kw.get("is_master") and kw.get("master_listen_fd") is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, port))
            s.listen(4096)
            _sockets.append(s)
            kw["master_listen_fd"], port = s.fileno(), s.getsockname()[1]
        super().__init__(host_name, port, **kw)


def loopback_interface() -> str | None:
    """The loopback network interface's name ('lo' on Linux, 'lo0' on macOS and BSD), if there is one."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((n for n in names if n in ("lo", "lo0")), None)


NEEDS_OUT = ("data-parallel training needs `out` (or `resume`): every worker, and workers that torchrun restarts, "
             "must find the same run folder")


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job; world 1 is a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    restarted: bool = False  # torchrun restarted the workers of some node: the job goes on from last.pt

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float], device) -> list[float]:
        """Element-wise sum of ``values`` over all ranks, in float64."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def sum_tensor(self, t: torch.Tensor, device) -> torch.Tensor:
        """``t`` summed over all ranks (reduced on ``device``, returned where ``t`` was)."""
        if not self.active:
            return t
        on = t.to(device)
        dist.all_reduce(on)
        return on.to(t.device)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def timeout_s() -> float:
    text = os.environ.get("CNNLAB_DIST_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise CnnlabError(f"CNNLAB_DIST_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise CnnlabError(f"CNNLAB_DIST_TIMEOUT must be positive, got {text!r}")
    return value


def init(device_name: str) -> tuple[Dist, str]:
    """Join the process group that torchrun's environment describes; returns (Dist, device name to use).
    Without torchrun's variables (or with WORLD_SIZE=1) nothing is initialised."""
    if not launched_by_torchrun():
        return Dist(), device_name
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise CnnlabError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    if world == 1:
        return Dist(), device_name
    use_cuda = resolve_device(device_name).type == "cuda"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise CnnlabError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              f"start at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    seconds = timeout_s()
    if not dist.is_initialized():
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        try:
            # the store torchrun's agent serves (or, without an agent, rank 0 hosts: for a loopback MASTER_ADDR
            # only on loopback), under a prefix this generation of workers agrees on (fresh_prefix)
            agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            host = os.environ["MASTER_ADDR"]
            kind = LoopbackTCPStore if _is_loopback(host) else dist.TCPStore
            store = kind(host, int(os.environ["MASTER_PORT"]), world, is_master=rank == 0 and not agent,
                         timeout=timedelta(seconds=seconds))
            prefix, restarts = fresh_prefix(store, rank, world, seconds,
                                            int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0))
            # device_id binds NCCL to this worker's GPU and forms the communicator now, so a broken NCCL setup
            # fails here, within the timeout, rather than at the first all-reduce
            dist.init_process_group(backend, store=dist.PrefixStore(prefix, store),
                                    rank=rank, world_size=world, timeout=timedelta(seconds=seconds),
                                    device_id=torch.device("cuda", local_rank) if use_cuda else None)
        except KeyError as e:
            raise CnnlabError(f"{e.args[0]} is not set: launch with torchrun, which sets it") from None
        except (RuntimeError, ValueError, dist.DistError) as e:
            raise CnnlabError(f"rank {rank} of {world} could not join the process group at {where} within "
                              f"{seconds:g} s ({str(e).splitlines()[0][:200]}); check --rdzv-endpoint / "
                              f"MASTER_ADDR and MASTER_PORT, and that every node was started") from None
    else:  # joined by the caller: no agreement on restarts was made
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    return Dist(rank, world, local_rank, restarts > 0), ("cuda" if use_cuda else "cpu")


def fresh_prefix(store, rank: int, world: int, seconds: float, restarts: int = 0,
                 poll: float = 0.01) -> tuple[str, int]:
    """A store prefix that every worker of this generation agrees on and no earlier generation used, and
    the largest restart count among them.

    torchrun's agent keeps its store across restarts, so it still holds the keys of workers that died
    (their process-group addresses). The restart count does not tell generations apart: it counts each
    node's own failures, so after one node's worker dies its count is 1 while a healthy node, restarted
    for the new rendezvous round, stays at 0 (and would start the job afresh while the other resumes).
    Instead rank 0 draws a random session id and every other rank proves it has read this one: it posts
    (its own random id, the session it read, its restart count) until rank 0 answers with its id, which no
    stale key can hold, and the largest count. Gives up after ``seconds``."""
    import time
    import uuid

    me, deadline = uuid.uuid4().hex, time.monotonic() + seconds

    def wait():
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank} waited {seconds:g} s for the other ranks of this generation")
        time.sleep(poll)

    if rank == 0:
        store.set("cnnlab/session", me)
        pending, acked, most = set(range(1, world)), {}, restarts
        while pending:
            for r in sorted(pending):
                if store.check([f"cnnlab/ack/{r}"]):
                    nonce, session, count = (store.get(f"cnnlab/ack/{r}").decode().split(":") + ["", ""])[:3]
                    if session == me:
                        acked[r], most = nonce, max(most, int(count or 0))
                        pending.discard(r)
            if pending:
                wait()
        for r, nonce in acked.items():  # answered once all are in, so every rank learns the same count
            store.set(f"cnnlab/confirm/{r}", f"{nonce}:{me}:{most}")
        return f"cnnlab/{me}", most
    while True:
        if store.check(["cnnlab/session"]):
            store.set(f"cnnlab/ack/{rank}", f"{me}:{store.get('cnnlab/session').decode()}:{restarts}")
        if store.check([f"cnnlab/confirm/{rank}"]):
            nonce, session, most = (store.get(f"cnnlab/confirm/{rank}").decode().split(":") + ["", ""])[:3]
            if nonce == me:
                return f"cnnlab/{session}", int(most or 0)
        wait()


def wrap(model: torch.nn.Module, device: torch.device, sync_bn: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(model, step model) for data-parallel training: with ``sync_bn`` every BatchNorm becomes a SyncBatchNorm
    holding the same parameter and buffer tensors (so an optimiser built before still updates them), then the
    model is wrapped in DistributedDataParallel, on this worker's GPU when it has one, looking for unused
    parameters in models that skip branches (``may_skip_parameters``). The first is the bare
    module whose state_dict is saved (keys without DDP's ``module.`` prefix); the second is called in steps."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # Stochastic depth and drop-path skip whole branches in some steps. Every rank draws the same skips (same
    # seed, same draws), so those parameters are unused on all ranks: DDP must look for them (else it stops
    # with "Expected to have finished reduction"), and then leaves their gradients None, as one process would.
    skips = any(getattr(m, "may_skip_parameters", False) for m in model.modules())
    return model, DistributedDataParallel(model, device_ids=ids, find_unused_parameters=skips)


def _is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address as written; host names are not resolved (a Debian machine's own
    name resolves to 127.0.1.1, yet other nodes reach it under that name)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(nproc: int, argv: list[str], max_restarts: int = 0) -> list[str]:
    """The command that ``cnnlab train --nproc N`` runs: ``torchrun --standalone`` (a single-node job) whose
    servers listen on 127.0.0.1 only (cnnlab.train.torchrun_local)."""
    return [sys.executable, "-m", "cnnlab.train.torchrun_local", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "cnnlab", *argv]


def worker_threads(nproc: int) -> int:
    """CPU threads per worker when ``nproc`` workers share this machine: its usable cores split evenly.
    (torchrun's own default is 1, which leaves all but ``nproc`` cores idle on a CPU.)"""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Run ``cnnlab <argv>`` in ``nproc`` workers under torchrun on this machine; returns its exit code.
    Each worker gets ``worker_threads(nproc)`` threads unless OMP_NUM_THREADS is set."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(worker_threads(nproc)))
    return subprocess.call(torchrun_command(nproc, argv, max_restarts), env=env)


def check_launch(nproc: int, cfg: TrainConfig) -> None:
    """Refuse, before any worker starts, a data-parallel run of ``cfg`` in ``nproc`` processes on this machine
    that could not work: a launch from inside torchrun, no run folder for the workers to share, an unknown
    model, more processes than GPUs, or a resumed run asked to change its settings."""
    from cnnlab.models import model_card
    from cnnlab.train.rundir import check_destination

    if launched_by_torchrun():
        raise CnnlabError("`nproc` starts torchrun; this process already runs under torchrun, so leave it out",
                          params=("nproc",))
    if not (cfg.out or cfg.resume):
        raise CnnlabError(NEEDS_OUT, params=("out", "resume"))
    check_destination(cfg.out, cfg.resume, cfg.overwrite)
    model_card(cfg.model)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    resolve_device(cfg.device)
    if cfg.device != "cpu" and gpus and nproc > gpus:
        raise CnnlabError(f"`nproc` {nproc} needs a GPU per process and this machine has {gpus}; use `nproc` {gpus} "
                          f"or less, or `device` cpu", params=("nproc", "device"))
    if cfg.resume:
        from cnnlab.runs import load_checkpoint
        from cnnlab.train.config import resumed_config

        cfg = resumed_config(load_checkpoint(cfg.resume)["info"], cfg)
    from cnnlab.train.recipes import get_recipe, recipe_for

    check_global_batch(cfg.batch_size or (get_recipe(cfg.recipe) if cfg.recipe else recipe_for(cfg.model)).batch_size,
                       nproc)


def check_global_batch(batch_size: int, world: int) -> None:
    """The global batch must split evenly over the processes (checked by the launcher and by each worker)."""
    if batch_size % world:
        raise CnnlabError(f"`batch_size` {batch_size} is the global batch and must split evenly over {world} "
                          f"processes; pick a multiple of {world}", params=("batch_size",))
