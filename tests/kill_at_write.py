"""Run by tests/test_never_lose_a_run.py: ``python kill_at_write.py N WHEN CNNLAB-ARGS...`` runs the cnnlab
command line and kills its own process with SIGKILL at the N-th atomic write of a run file (1-based), "before" the
write's rename (its temporary file is complete, the target not yet replaced) or "after" it: the moments a
power cut or kill -9 can land while a run writes its folder."""

import os
import signal
import sys

from cnnlab.cli import main
from cnnlab.train.rundir import RUN_FILES

count, when, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
real_replace, calls = os.replace, [0]


def replace(src, dst):
    if os.path.basename(dst) not in RUN_FILES:  # another library's file (a font cache, ...)
        return real_replace(src, dst)
    calls[0] += 1
    if calls[0] == count and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if calls[0] == count and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
sys.exit(main(argv))
