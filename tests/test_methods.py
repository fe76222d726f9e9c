"""The method contract (``peft_bench.testing``) for every method on tiny random models (encoder and
decoder), trained by the real loop: the six built-ins and every runnable type of peft's registry.

For each case: the loss falls, exactly the intended parameters change (frozen base weights stay
bit-identical), the parameter counts are peft's, the saved artifact reloads onto a fresh base model
with identical outputs, three artifacts switch, and a mixed-task batch equals each row served alone
or is refused with the reason.
"""

from __future__ import annotations

import re

import pytest

from peft_bench.core.registry import METHODS, load_builtin_plugins
from peft_bench.testing import check_method, tiny_spec

load_builtin_plugins()
PEFT_TRAINABLE = r"prompt_encoder|lora_|\.bank\.default\.|classifier"
MIXES = "mixed"
BUILTIN = [  # (method, model, method_config, regex of parameter names that must train, mixed-batch outcome)
    ("prompt_tuning", "tiny-bert", {"init": "class_label"}, PEFT_TRAINABLE, MIXES),
    ("prompt_tuning", "tiny-llama", {"init": "random"}, PEFT_TRAINABLE, MIXES),
    ("prompt_tuning", "tiny-llama", {"init": "text", "num_virtual_tokens": 4}, PEFT_TRAINABLE, MIXES),
    ("prompt_tuning", "tiny-bert", {"init": "sample_vocab"}, PEFT_TRAINABLE, MIXES),
    ("prompt_tuning", "tiny-llama", {"init": "sample_frequent"}, PEFT_TRAINABLE, MIXES),
    ("prefix_tuning", "tiny-bert", {"projection": True}, PEFT_TRAINABLE, MIXES),  # per-row prefixes from a bank
    ("prefix_tuning", "tiny-llama", {"projection": False}, PEFT_TRAINABLE, MIXES),
    ("p_tuning", "tiny-bert", {}, PEFT_TRAINABLE, MIXES),
    ("p_tuning", "tiny-llama", {}, PEFT_TRAINABLE, MIXES),
    ("lora", "tiny-bert", {}, PEFT_TRAINABLE, MIXES),
    ("lora", "tiny-llama", {}, PEFT_TRAINABLE, MIXES),
    ("bottleneck_adapter", "tiny-bert", {"variant": "houlsby", "lr": 3e-3}, PEFT_TRAINABLE, MIXES),
    ("bottleneck_adapter", "tiny-llama", {"variant": "pfeiffer", "lr": 3e-3}, PEFT_TRAINABLE, MIXES),
    ("full_finetune", "tiny-bert", {"lr": 1e-3}, r".", r"n/a, one forward pass runs one full set of weights"),
    ("full_finetune", "tiny-llama", {"lr": 1e-3}, r".", r"n/a, one forward pass runs one full set of weights"),
]
LORA_VARIANTS = [  # peft's LoRA variants through lora's config
    ("lora", "tiny-bert", {"use_dora": True, "use_rslora": True}, PEFT_TRAINABLE, "DoRA"),
    ("lora", "tiny-llama", {"init": "pissa"}, PEFT_TRAINABLE, MIXES),
    ("lora", "tiny-llama", {"init": "olora"}, PEFT_TRAINABLE, MIXES),
    ("lora", "tiny-llama", {"init": "gaussian", "use_dora": True}, PEFT_TRAINABLE, "DoRA"),
]
# sizes peft's defaults set for wider layers than the tiny models' (64 wide)
TINY_CONFIGS = {"shira": {"r": 4}, "waveft": {"n_frequency": 100}}
ROUTED_BY_PEFT = {"glora", "road", "cartridge"}  # rows routed: by peft (adapter_names), or a prefix cache per row (cartridge)


def _peft_cases():
    kinds = {"tiny-bert": "encoder", "tiny-llama": "causal"}
    for name in METHODS.names():
        cls = METHODS.get(name)
        if getattr(cls, "peft_type", None) is None or cls.refusal():
            continue
        for model, kind in kinds.items():
            if not cls.refusal(kind):
                yield (name, model, TINY_CONFIGS.get(name, {}), None,
                       MIXES if name in ROUTED_BY_PEFT else "peft does not route rows to adapters")


PEFT_CASES = list(_peft_cases())


def _ids(case):
    return f"{case[0]}-{case[1]}" + "".join(f"-{k}={v}" for k, v in case[2].items())


@pytest.mark.parametrize("case", BUILTIN + [pytest.param(c, marks=pytest.mark.slow) for c in LORA_VARIANTS], ids=_ids)
def test_builtin_method_keeps_the_contract(case, tmp_path):
    method, model, config, pattern, serving = case
    t = check_method(method, model, tmp_path, method_config=config, pattern=pattern)
    assert t.serving == MIXES if serving == MIXES else re.search(serving, t.serving), t.serving
    if method == "full_finetune":
        assert all(p.requires_grad for p in t.model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("case", PEFT_CASES, ids=_ids)
def test_every_runnable_peft_type_keeps_the_contract(case, tmp_path):
    method, model, config, _, serving = case
    t = check_method(method, model, tmp_path, method_config=config)
    assert t.serving == MIXES if serving == MIXES else serving in t.serving, t.serving
    base = [n for n, p in t.model.named_parameters() if p.requires_grad and "base_layer" in n]
    assert not base, f"base weights trainable: {base[:3]}"


def test_the_generated_cases_cover_peft_s_registry():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    names = {pt.value.lower() for pt in PEFT_TYPE_TO_CONFIG_MAPPING}
    covered = {c[0] for c in PEFT_CASES}
    refused = {n for n in names if METHODS.get(n).refusal()}
    reference = {"prompt_tuning", "prefix_tuning", "p_tuning", "lora"}
    assert covered | refused | reference == names
    assert len(covered) >= 30, sorted(covered)


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
