"""``torchrun --standalone`` kept on the loopback interface: what ``cnnlab train --nproc N`` runs.

torchrun's c10d stores (the rendezvous store and the store its workers meet at) are servers, and a TCPStore
server listens on every network interface whatever host it is given. A single-machine job needs none of that
reach, and these stores have no authentication. This launcher runs torchrun unchanged except that every store
server it starts listens on 127.0.0.1 only (TCPStore's ``master_listen_fd``: the socket is bound here, then
handed over), the node's address is 127.0.0.1 (``--local-addr``), and gloo's own sockets use the loopback
interface (``GLOO_SOCKET_IFNAME``, unless it is set). Multi-node jobs use ``torchrun`` itself, which must
listen on the network (docs/distributed.md).

    python -m cnnlab.train.torchrun_local --nproc-per-node 2 -m cnnlab train ...
"""

from __future__ import annotations

import os
import socket
import sys

import torch.distributed as dist

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


def main(argv: list[str]) -> None:
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend
    from torch.distributed.run import main as torchrun

    dist.TCPStore = c10d_rendezvous_backend.TCPStore = LoopbackTCPStore
    lo = loopback_interface()
    if lo and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = lo  # inherited by the workers
    torchrun(["--standalone", "--local-addr", LOOPBACK, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
