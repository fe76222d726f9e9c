"""Imported by the run server only (last in ``peft_bench.execution.server.PRELOAD``).

- The server dies with the suite process that started it (Linux ``PR_SET_PDEATHSIG``): a suite
  killed by ``kill -9``, SIGTERM or a crash never leaves its server behind, and every run forked
  from the server dies with the server (``executor.die_with_parent``). Without this the server
  outlived a killed suite (seen: server and run alive under PID 1 thirty seconds later).
- Ctrl-C is the suite's to handle: the terminal sends SIGINT to the whole process group, and the
  server and its runs ignore it (the suite kills the running run and prints its summary).
- The server leaves at once when the suite process ends, instead of tearing torch, transformers &
  co down module by module (1.3 s here, during which it still holds the suite's stdout open, so a
  pipe such as ``peftbench run | tee log`` waits for it). The server has nothing to flush: runs are
  forked children, which exit through ``os._exit`` themselves and never run these handlers."""

import atexit
import os
import signal

from peft_bench.execution.local import die_with_parent

signal.signal(signal.SIGINT, signal.SIG_IGN)
# (not Linux/glibc: the forkserver's own EOF check remains)
if die_with_parent() and os.getppid() == 1:  # the suite died before that: PDEATHSIG would never fire
    os._exit(0)

atexit.register(os._exit, 0)
