"""A dummy method for end-to-end and fault-injection tests: LoRA plus an injectable fault.

``fault`` makes a run fail on purpose at ``fault_step``, in the run's own process, so that tests
exercise the real failure paths of a suite: an exception, a NaN loss, the process killed with
SIGKILL, a hang past the timeout, or memory exhausted; or pause a run for a few seconds and go on
(a run that is reliably in the middle of its training when a test kills its suite).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Literal

import torch

from peft_bench import check, opt, register_method
from peft_bench.methods.lora import LoraConfig, LoraMethod


@dataclass
class DummyConfig(LoraConfig):
    fault: Literal["none", "raise", "nan", "kill", "hang", "oom", "pause"] = opt("none", "failure to inject (tests)")
    fault_step: int = opt(2, "optimizer step after which the fault happens")
    pause_s: float = opt(3.0, "seconds a `pause` fault sleeps before training goes on")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.fault_step >= 1, "fault_step", "a positive integer", self.fault_step)
        check(self.pause_s >= 0, "pause_s", "a number of seconds >= 0", self.pause_s)


@register_method("dummy")
class DummyMethod(LoraMethod):
    config_cls = DummyConfig
    description = "tests only: LoRA with an injectable fault (raise, nan, kill, hang, oom, pause)"

    def __init__(self, config=None):
        super().__init__(config)
        self._steps = 0

    def after_step(self, model) -> None:
        self._steps += 1
        if self._steps != self.config.fault_step or self.config.fault == "none":
            return
        fault = self.config.fault
        if fault == "raise":
            raise RuntimeError(f"injected failure after step {self._steps}")
        if fault == "nan":
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.fill_(float("nan"))
        elif fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "hang":
            time.sleep(3600)
        elif fault == "pause":
            time.sleep(self.config.pause_s)
        elif fault == "oom":
            raise MemoryError("injected: cannot allocate memory")
