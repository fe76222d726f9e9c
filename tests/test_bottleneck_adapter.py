"""The native bottleneck adapter's peft-like life-cycle: several adapters, one active, per-row choice."""

from __future__ import annotations

import pytest
import torch

from peft_bench.assets import models
from peft_bench.engine.prepare import prepare
from conftest import tiny_spec


@pytest.mark.parametrize("model,variant", [("tiny-bert", "houlsby"), ("tiny-llama", "pfeiffer"), ("tiny-llama", "houlsby")])
def test_several_adapters_active_and_per_row(model, variant, tmp_path):
    run = prepare(tiny_spec("bottleneck_adapter", model, method_config={"variant": variant}))
    method, ctx = run.method, run.ctx
    wrapped = run.model
    batch = next(iter(run.test_dl))
    ids, mask = batch["input_ids"][:6], batch["attention_mask"][:6]

    def forward(m):
        with torch.inference_mode():
            return m(input_ids=ids, attention_mask=mask).logits

    fresh = models.load(models.resolve(model), run.task.num_labels).model
    if run.ctx.kind == "causal":  # (an encoder's head is freshly initialised at every load)
        # zero-initialised up-projection: the adapted model starts as exactly the base model
        torch.testing.assert_close(forward(wrapped), forward(fresh), atol=0, rtol=0)

    # two different adapters saved to disk, then loaded beside each other
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        with torch.no_grad():
            for k, p in wrapped.named_parameters():
                if ".bank.default." in k:
                    p.normal_(0, 0.2)
        method.save(wrapped, tmp_path / name)
    served = method.load(fresh, tmp_path / "a", ctx, "a")
    served = method.load(served, tmp_path / "b", ctx, "b")
    out_a = forward(method.activate(served, "a"))
    out_b = forward(method.activate(served, "b"))
    assert not torch.allclose(out_a, out_b)

    rows = ["a", "b", "b", "a", "b", "a"]
    with served.mixed(rows):
        mixed = forward(served)
    expected = torch.stack([(out_a if n == "a" else out_b)[i] for i, n in enumerate(rows)])
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=0)

    with pytest.raises(KeyError, match=r"unknown adapter\(s\) \['c'\]; loaded: \['a', 'b'\]"):
        with served.mixed(["a", "c", "a", "a", "a", "a"]):
            pass
