"""``torchrun --standalone`` kept on the loopback interface: what ``cnnlab train --nproc N`` runs.

torchrun's c10d stores (the rendezvous store and the store its workers meet at) are servers, and a TCPStore
server listens on every network interface whatever host it is given. A single-machine job needs none of that
reach, and these stores have no authentication. This launcher runs torchrun unchanged except that every store
server it starts listens on 127.0.0.1 only (TCPStore's ``master_listen_fd``: the socket is bound here, then
handed over), the node's address is 127.0.0.1 (``--local-addr``), and gloo's sockets and NCCL's bootstrap use
the loopback interface (``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME``, unless they are set). Multi-node jobs
use ``torchrun`` itself, which must listen on the network (docs/distributed.md).

    python -m cnnlab.train.torchrun_local --nproc-per-node 2 -m cnnlab train ...
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from cnnlab.train.distributed import LOOPBACK, LoopbackTCPStore, loopback_interface


def main(argv: list[str]) -> None:
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend
    from torch.distributed.run import main as torchrun

    dist.TCPStore = c10d_rendezvous_backend.TCPStore = LoopbackTCPStore
    lo = loopback_interface()
    if lo:  # inherited by the workers: gloo's pairs and NCCL's bootstrap listen on the loopback interface
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            os.environ.setdefault(var, lo)
    torchrun(["--standalone", "--local-addr", LOOPBACK, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
