"""Every peft type is a method, generated from peft's own registry (methods/peft_types.py): listed,
configured with peft's own fields, refused up front where it cannot run, and a type registered in
peft at run time is a method too."""

from __future__ import annotations

import dataclasses

import pytest

from peft_bench.cli import main
from peft_bench.core.registry import METHODS
from tests.test_suites import write

TRAIN = "[train]\nsteps = 2\nbatch_size = 4\nn_train = 32\nn_test = 16\n"


def test_list_names_every_peft_type_runnable_or_with_its_reason(capsys):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("  ") and line.split()}
    types = [pt.value.lower() for pt in PEFT_TYPE_TO_CONFIG_MAPPING]
    assert all(t in lines for t in types), [t for t in types if t not in lines]
    runnable = [t for t in types if "NOT RUNNABLE" not in lines[t]]
    assert len(runnable) >= 30, runnable
    for t in set(types) - set(runnable):  # each with its reason
        assert len(lines[t].split("NOT RUNNABLE: ")[1]) > 40, lines[t]
    assert "NOT RUNNABLE: X-LoRA mixes LoRA experts that are already trained" in lines["xlora"]
    assert "NOT RUNNABLE" not in lines["poly"] and "NOT RUNNABLE" not in lines["multitask_prompt_tuning"]


def test_list_configs_shows_peft_s_own_fields_and_help(capsys):
    assert main(["list", "--configs"]) == 0
    out = capsys.readouterr().out
    loha = out[out.index("  loha "):out.index("  lokr ")]
    assert "r (int, default 8): LoHa rank" in loha
    assert "rank_dropout (float, default 0.0): The dropout probability for rank dimension during training" in loha
    assert "lr (float, default 0.001)" in loha


def test_a_mistyped_field_of_a_peft_type_fails_before_anything_runs(tmp_path, capsys):
    suite = write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["ia3", "loha", "vera"]\n' + TRAIN
                  + "[method.loha]\nrank = 4\n")
    out = tmp_path / "out"
    assert main(["run", suite, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "[method.loha]: unknown key 'rank' for LohaConfig." in err and "Valid keys: alpha, alpha_pattern" in err
    assert " r, rank_dropout, " in err
    assert not out.exists()


def test_peft_validates_the_config_up_front(tmp_path, capsys):
    suite = write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["vera"]\n' + TRAIN
                  + "[method.vera]\nr = \"eight\"\n")
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "`r` must be an integer, got 'eight'" in capsys.readouterr().err
    # a rule only peft knows: its own config class checks it when the suite is loaded
    suite = write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["boft"]\n' + TRAIN
                  + "[method.boft]\nboft_block_size = 4\nboft_block_num = 2\n")
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "[method.boft]: peft's BOFTConfig refuses this config: You can only specify either boft_block_size" in err


@pytest.mark.parametrize("methods,model,message", [
    ('["cpt"]', "tiny-llama", "method 'cpt' cannot run here: CPT trains on few-shot contexts"),
    ('["lora", "xlora"]', "tiny-bert", "method 'xlora' cannot run here: X-LoRA mixes LoRA experts"),
    ('["adaption_prompt"]', "tiny-bert", "method 'adaption_prompt' runs on causal models only (peft implements "
                                         "adaption prompts for Llama-style decoder attention only); model "
                                         "'tiny-bert' is of kind encoder"),
    ('["lora"]\n[grid.lora]\ninit = ["default", "pissa"]', "tiny-bert",
     "lora's init 'pissa' runs on causal models only here: peft cannot convert it"),
])
def test_a_type_that_cannot_run_is_refused_with_its_reason(tmp_path, capsys, methods, model, message):
    suite = write(tmp_path, f'models = ["{model}"]\ntasks = ["dummy"]\nmethods = {methods}\n' + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_a_type_registered_in_peft_at_run_time_is_a_method(tmp_path):
    """FROD taken out of peft's registry is no method; registered again through peft's own
    ``register_peft_method`` with a config class that has one more field, it is a method with that
    field, and it keeps the contract on a tiny model."""
    from peft import FrodConfig, FrodModel
    from peft.mapping import (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
                              PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING)
    from peft.utils import PeftType, register_peft_method

    from peft_bench.core.config import describe
    from peft_bench.testing import check_method

    tables = (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING,
              PEFT_TYPE_TO_MIXED_MODEL_MAPPING)
    saved = [dict(t) for t in tables]

    @dataclasses.dataclass
    class MyFrodConfig(FrodConfig):
        my_knob: int = dataclasses.field(default=3, metadata={"help": "a field only this registration has"})

    try:
        for t in tables:
            t.pop(PeftType.FROD, None)
        assert "frod" not in METHODS.names() and "frod" not in METHODS
        register_peft_method(name="frod", config_cls=MyFrodConfig, model_cls=FrodModel,
                             prefix=PEFT_TYPE_TO_PREFIX_MAPPING.get(PeftType.FROD) or saved[2][PeftType.FROD])
        assert "frod" in METHODS.names()
        fields = {row[0]: row for row in describe(METHODS.get("frod").config_cls)}
        assert fields["my_knob"][2:] == (3, "a field only this registration has")
        check_method("frod", "tiny-bert", tmp_path, method_config={"my_knob": 5})
    finally:
        for t, before in zip(tables, saved):
            t.clear()
            t.update(before)
    assert METHODS.get("frod").config_cls.peft_cls is FrodConfig


def test_adalora_allocates_ranks_and_adds_peft_s_orthogonality_penalty(tmp_path):
    """AdaLoRA's two loop additions: the run's steps are its budget schedule, the allocation masks
    singular values (the artifact keeps only the ranks left), and the penalty is the one peft adds
    inside its own forward when the model computes the loss (checked against that forward)."""
    import json

    import torch
    from safetensors.torch import load_file

    from peft_bench.testing import train_tiny

    t = train_tiny("adalora", "tiny-llama", method_config={"init_r": 6, "target_r": 2})
    model = t.model
    assert model.peft_config["default"].total_step == 40
    t.run.method.save(model, tmp_path)
    pattern = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    kept = {k: sum(v) for k, v in pattern.items()}
    assert kept and sum(kept.values()) < 6 * len(kept), kept  # the budget fell from init_r towards target_r
    stored = load_file(tmp_path / "adapter_model.safetensors")
    assert sum(v.numel() for k, v in stored.items() if "lora_E" in k) == sum(kept.values())

    model.eval()
    ids = torch.randint(3, 100, (2, 12))
    plain = model(input_ids=ids, labels=ids).loss  # AdaLoraModel.forward adds its penalty to this loss
    reg = t.run.method.regularization(model)
    without = model.get_base_model()(input_ids=ids, labels=ids).loss  # the same model, peft's forward skipped
    assert reg is not None and reg.item() > 0
    torch.testing.assert_close(plain - without, reg, rtol=1e-5, atol=1e-6)
