"""Every method on tiny random models (encoder and decoder), trained by the real loop.

For each case: the loss falls, exactly the intended parameters change (frozen base weights stay
bit-identical), and the saved artifact reloads onto a fresh base model with identical outputs.
"""

from __future__ import annotations

import re

import pytest
import torch

from peft_bench.assets import models
from conftest import tiny_spec

PEFT_TRAINABLE = r"prompt_encoder|lora_|\.bank\.default\.|classifier"
CASES = [  # (method, model, method_config, regex of parameter names that must train)
    ("prompt_tuning", "tiny-bert", {"init": "class_label"}, PEFT_TRAINABLE),
    ("prompt_tuning", "tiny-llama", {"init": "random"}, PEFT_TRAINABLE),
    ("prompt_tuning", "tiny-llama", {"init": "text", "num_virtual_tokens": 4}, PEFT_TRAINABLE),
    ("prompt_tuning", "tiny-bert", {"init": "sample_vocab"}, PEFT_TRAINABLE),
    ("prompt_tuning", "tiny-llama", {"init": "sample_frequent"}, PEFT_TRAINABLE),
    ("prefix_tuning", "tiny-bert", {"projection": True}, PEFT_TRAINABLE),
    ("prefix_tuning", "tiny-llama", {"projection": False}, PEFT_TRAINABLE),
    ("p_tuning", "tiny-bert", {}, PEFT_TRAINABLE),
    ("p_tuning", "tiny-llama", {}, PEFT_TRAINABLE),
    ("lora", "tiny-bert", {}, PEFT_TRAINABLE),
    ("lora", "tiny-llama", {}, PEFT_TRAINABLE),
    ("bottleneck_adapter", "tiny-bert", {"variant": "houlsby", "lr": 3e-3}, PEFT_TRAINABLE),
    ("bottleneck_adapter", "tiny-llama", {"variant": "pfeiffer", "lr": 3e-3}, PEFT_TRAINABLE),
    ("full_finetune", "tiny-bert", {"lr": 1e-3}, r"."),
    ("full_finetune", "tiny-llama", {"lr": 1e-3}, r"."),
]


def _ids(case):
    return f"{case[0]}-{case[1]}-{'-'.join(f'{k}={v}' for k, v in case[2].items())}"


@pytest.fixture(scope="module", params=CASES, ids=_ids)
def trained(request):
    from peft_bench.engine.prepare import prepare
    from peft_bench.engine.loop import train

    method, model, mcfg, pattern = request.param
    run = prepare(tiny_spec(method, model, method_config=mcfg))
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    out = train(run)
    return run, before, out, pattern


def test_loss_falls(trained):
    _, _, out, _ = trained
    first, last = sum(out.losses[:5]) / 5, sum(out.losses[-5:]) / 5
    assert last < first, f"loss did not fall: first {first:.4f}, last {last:.4f}"


def test_only_intended_parameters_change(trained):
    run, before, _, pattern = trained
    after = dict(run.accelerator.unwrap_model(run.model).named_parameters())
    changed = [n for n, p in after.items() if not torch.equal(p.detach(), before[n])]
    frozen_changed = [n for n in changed if not after[n].requires_grad]
    assert not frozen_changed, f"frozen weights changed: {frozen_changed[:5]}"
    # the method's own parameters trained, not only the task head every encoder method trains
    heads = run.ctx.head_names
    beyond_head = [n for n in changed if not any(h in n.split(".") for h in heads)]
    assert beyond_head, f"only the task head changed: {changed[:5]}"
    trainable = [n for n, p in after.items() if p.requires_grad]
    assert all(re.search(pattern, n) for n in trainable), [n for n in trainable if not re.search(pattern, n)][:5]
    if run.spec.method == "full_finetune":
        assert len(trainable) == len(after)


def _batch(run):
    batch = next(iter(run.test_dl))
    return {k: v for k, v in batch.items()}


def test_artifact_reloads_to_identical_outputs(trained, tmp_path):
    run, _, _, _ = trained
    model = run.accelerator.unwrap_model(run.model)
    model.eval()
    run.method.save(model, tmp_path)
    assert any(p.suffix == ".safetensors" for p in tmp_path.rglob("*")), "artifact has no safetensors file"
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in tmp_path.rglob("*")), "pickle in artifact"
    mspec = models.resolve(run.spec.model)
    fresh = models.load(mspec, run.task.num_labels).model
    reloaded = run.method.load(fresh, tmp_path, run.ctx, name="reloaded")
    reloaded.eval()
    batch = _batch(run)
    with torch.inference_mode():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
def test_parameter_counts_follow_their_formulas(model):
    from peft_bench.engine.prepare import prepare

    pt = prepare(tiny_spec("prompt_tuning", model, method_config={"num_virtual_tokens": 7}))
    hidden = pt.model.get_base_model().config.hidden_size
    head = (hidden + 1) * 2 if model == "tiny-bert" else 0  # linear head: weight + bias, 2 classes
    assert pt.params["trainable_params"] == 7 * hidden + head
    assert pt.params["trainable_head_params"] == head
    ft = prepare(tiny_spec("full_finetune", model))
    assert ft.params["trainable_params"] == ft.params["total_params"] == sum(p.numel() for p in ft.model.parameters())
