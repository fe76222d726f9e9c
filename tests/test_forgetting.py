"""Forgetting (causal LMs): the general-text loss with the adapter minus the base model's, checked
against transformers' own language-modelling loss on the same tokens."""

from __future__ import annotations

import pytest
import torch

from peft_bench.assets import models
from peft_bench.engine.forgetting import general_text
from peft_bench.engine.record import execute
from peft_bench.testing import tiny_spec


def _hf_loss(model, text) -> float:
    """transformers' own causal-LM loss (labels = inputs, pads ignored), summed over the sample."""
    total = 0.0
    with torch.inference_mode():
        for ids, mask in text.batches:
            labels = ids.masked_fill(mask == 0, -100)
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * n
    return total / text.tokens


@pytest.mark.slow
def test_forgetting_is_the_adapted_minus_the_base_general_text_loss(tmp_path):
    rec = execute(tiny_spec("lora", "tiny-llama", method_config={"lr": 0.01}), tmp_path)
    assert rec.status == "ok", rec.error
    res = rec.resources
    mspec = models.resolve("tiny-llama")
    base = models.load(mspec, 2)
    text = general_text(base.tokenizer)
    assert text.tokens > 1000
    assert abs(res.general_loss_base - _hf_loss(base.model.eval(), text)) < 1e-4
    # the saved adapter on a fresh base: what the run measured with it active
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(models.load(mspec, 2).model, rec.run.artifact_dir).eval()
    assert abs(res.general_loss_adapted - _hf_loss(adapted, text)) < 1e-4
    assert res.forgetting == res.general_loss_adapted - res.general_loss_base
    assert res.forgetting != 0 and res.forgetting_time_s > 0
    from peft_bench.results.report import make_table

    table = make_table([rec], "dummy")
    assert "forgetting ↓" in table and f"{res.forgetting:+.3f}" in table


@pytest.mark.slow
def test_the_untrained_model_forgets_nothing_and_encoders_have_no_figure(tmp_path):
    rec = execute(tiny_spec("zero_shot", "tiny-llama"), tmp_path / "z")
    assert rec.status == "ok", rec.error
    assert rec.resources.forgetting == 0.0
    rec = execute(tiny_spec("lora", "tiny-bert"), tmp_path / "b")
    assert rec.resources.forgetting is None and rec.resources.general_loss_base is None
    from peft_bench.results.report import make_table

    assert "forgetting" not in make_table([rec], "dummy")  # no column where no run has the figure
