"""Imported by the run server only (last in ``bench.server.PRELOAD``): the server leaves at once
when the suite process ends, instead of tearing torch, transformers & co down module by module
(1.3 s here, during which it still holds the suite's stdout open, so a pipe such as
``peftbench run | tee log`` waits for it). The server has nothing to flush: runs are forked
children, which exit through ``os._exit`` themselves and never run these handlers."""

import atexit
import os

atexit.register(os._exit, 0)
