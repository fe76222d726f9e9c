"""The method contract as checks any test suite can call: peft-bench's own, and an outside plugin's.

Each check trains (or serves) a method on a tiny random model with the real loop and raises
``AssertionError`` naming what broke::

    from peft_bench.testing import check_method

    @pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
    def test_my_method_keeps_the_contract(model, tmp_path):
        check_method("my_method", model, tmp_path, method_config={"lr": 3e-3})

What is checked (``check_method`` runs them all):
- ``check_loss_falls``: the mean loss of the last 5 steps is below that of the first 5;
- ``check_only_intended_parameters_change``: no frozen parameter changed by a bit, something beyond
  the task head trained, and (optionally) every trainable name matches a pattern;
- ``check_parameter_counts``: the trainable count is the number of parameters with requires_grad
  and peft's own count for peft models;
- ``check_reloads_identically``: the saved artifact, loaded onto a fresh base model, gives the
  same outputs (1e-5), and its stored count is what peft loads from it;
- ``check_serving``: three artifacts loaded side by side; activating each gives its own outputs
  (task switching), and a mixed-task batch either equals each row served alone (1e-5, padded rows
  of different lengths) or is refused with ``MixedBatchUnsupported`` — never silently wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from peft_bench.assets import models
from peft_bench.core.config import TrainConfig
from peft_bench.core.spec import RunSpec
from peft_bench.interface.method import MixedBatchUnsupported

TINY_MODELS = ("tiny-bert", "tiny-llama")  # a tiny random encoder and a tiny random causal LM
TOL = 1e-5


def tiny_spec(method: str, model: str = "tiny-bert", task: str = "dummy", method_config=None, **train) -> RunSpec:
    """A short run of ``method`` on a tiny model and the synthetic ``dummy`` task (seconds on a CPU)."""
    cfg = dict(steps=40, batch_size=16, n_train=400, n_test=64, eval_batch_size=32, max_length=64, num_threads=2,
               n_validation=64, eval_points=1)
    cfg.update(train)
    return RunSpec(model=model, task=task, method=method, method_config=method_config or {},
                   train=TrainConfig(**cfg)).resolve()


@dataclass
class Trained:
    run: object  # engine.prepare.Prepared, after training
    before: dict[str, torch.Tensor]  # every parameter before training
    outcome: object  # engine.loop.TrainOutcome
    serving: str = ""  # after check_method: "mixed", or why a mixed-task batch is refused

    @property
    def model(self) -> torch.nn.Module:
        return self.run.accelerator.unwrap_model(self.run.model)


def train_tiny(method: str, model: str = "tiny-bert", method_config=None, **train) -> Trained:
    """Prepare and train ``method`` with the harness's own loop (nothing mocked)."""
    from peft_bench.engine.loop import train as train_loop
    from peft_bench.engine.prepare import prepare

    run = prepare(tiny_spec(method, model, method_config=method_config, **train))
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    return Trained(run, before, train_loop(run))


def check_loss_falls(t: Trained) -> None:
    losses = t.outcome.losses
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"{t.run.spec.method}: the loss did not fall: first 5 steps {first:.4f}, last 5 {last:.4f}"


def check_only_intended_parameters_change(t: Trained, pattern: str | None = None) -> None:
    after = dict(t.model.named_parameters())
    changed = [n for n, p in after.items() if not torch.equal(p.detach(), t.before[n])]
    frozen_changed = [n for n in changed if not after[n].requires_grad]
    assert not frozen_changed, f"{t.run.spec.method}: frozen weights changed: {frozen_changed[:5]}"
    heads = t.run.ctx.head_names  # the task head every method trains on an encoder
    beyond_head = [n for n in changed if not any(h in n.split(".") for h in heads)]
    assert beyond_head, (f"{t.run.spec.method}: nothing but the task head trained (changed: {changed[:5]}); "
                         f"a method must train parameters of its own")
    if pattern is not None:
        trainable = [n for n, p in after.items() if p.requires_grad]
        stray = [n for n in trainable if not re.search(pattern, n)]
        assert not stray, f"{t.run.spec.method}: trainable parameters outside {pattern!r}: {stray[:5]}"


def check_parameter_counts(t: Trained) -> None:
    model = t.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert t.run.params["trainable_params"] == trainable, (t.run.params, trainable)
    if hasattr(model, "get_nb_trainable_parameters"):  # a peft model: peft's own count
        assert int(model.get_nb_trainable_parameters()[0]) == trainable


def _stored_matches_what_loads(method: str, folder: Path, reloaded) -> None:
    """The stored count (the artifact's safetensors) is what peft loads from it as the adapter."""
    from peft_bench.engine.measurement import stored_size

    stored = stored_size(folder)["stored_params"]
    assert stored > 0, f"{method}: the artifact stores no parameters"
    if hasattr(reloaded, "peft_config"):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(reloaded, adapter_name="reloaded")
        assert stored == sum(v.numel() for v in state.values()), (method, stored, sorted(state)[:5])


def _batch(run) -> dict:
    return dict(next(iter(run.test_dl)))


def check_reloads_identically(t: Trained, tmp_path: Path) -> None:
    run, model = t.run, t.model.eval()
    folder = tmp_path / "artifact"
    folder.mkdir(parents=True)  # as the harness does: `save` writes into an existing, empty folder
    run.method.save(model, folder)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files), f"{run.spec.method}: the artifact has no safetensors file"
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in files), f"{run.spec.method}: a pickle in the artifact"
    fresh = models.load(models.resolve(run.spec.model), run.task.num_labels).model
    reloaded = run.method.load(fresh, folder, run.ctx, name="reloaded").eval()
    _stored_matches_what_loads(run.spec.method, folder, reloaded)
    batch = _batch(run)
    with torch.inference_mode():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=TOL, rtol=0, msg=lambda m: f"{run.spec.method}: reloaded outputs differ: {m}")


def three_task_server(method: str, model: str, tmp_path: Path, method_config=None, run=None):
    """Three artifacts with different (random) weights, loaded beside each other on a fresh base:
    (the prepared run, the method, the served model). ``run``: a prepared run of the method to
    start from (else one is prepared)."""
    from peft_bench.engine.prepare import prepare

    if run is None:
        run = prepare(tiny_spec(method, model, method_config=method_config))
    for i, name in enumerate("abc"):
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for p in run.model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
        (tmp_path / name).mkdir(parents=True)
        run.method.save(run.model, tmp_path / name)
    served = models.load(models.resolve(model), run.task.num_labels).model
    for name in "abc":
        served = run.method.load(served, tmp_path / name, run.ctx, name)
    return run, run.method, served.eval()


def rows_of_different_lengths(run, n: int = 6):
    """``n`` test rows of at least three different lengths, right-padded into one batch."""
    ds = run.test_dl.dataset  # sorted by length, longest first
    step = max(1, len(ds) // n)
    feats = [ds[i * step] for i in range(n)]
    lengths = [len(f["input_ids"]) for f in feats]
    assert len(set(lengths)) > 2, lengths
    batch = run.ctx.tokenizer.pad([{"input_ids": f["input_ids"]} for f in feats], return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"], lengths


def _row(run, logits, i: int, n: int, width: int) -> torch.Tensor:
    """Row i's own outputs: the head's logits (encoder), or its n token positions (causal LM: virtual
    tokens come first, so they are the n positions after the first ``len - width``)."""
    if run.ctx.kind == "encoder":
        return logits[i]
    start = logits.shape[1] - width
    return logits[i, start:start + n]


def check_serving(method: str, model: str, tmp_path: Path, method_config=None, run=None) -> str:
    """Task switching and mixed-task batches; returns "mixed" or the reason mixing is refused."""
    run, m, served = three_task_server(method, model, tmp_path, method_config, run)
    ids, mask, lengths = rows_of_different_lengths(run)
    names = ["a", "b", "c", "b", "a", "c"]
    alone: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        for i, (name, n) in enumerate(zip(names, lengths)):  # switching: each row with its own task
            m.activate(served, name)
            out = served(input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n]).logits
            alone[i] = _row(run, out, 0, n, n)
        # the three tasks differ: a batch served by one artifact could not pass the checks below
        assert not torch.allclose(alone[0][..., :8], alone[1][..., :8], atol=1e-4), \
            f"{method}: three artifacts with different weights give the same outputs"
        for i, name in enumerate(names):  # switching back gives the same outputs again
            m.activate(served, name)
            out = served(input_ids=ids[i:i + 1, :lengths[i]], attention_mask=mask[i:i + 1, :lengths[i]]).logits
            torch.testing.assert_close(_row(run, out, 0, lengths[i], lengths[i]), alone[i], atol=TOL, rtol=0)
        try:
            paths = {"mixed batch": m.forward_mixed(served, ids, mask, names).logits}
        except MixedBatchUnsupported as e:
            assert str(e), f"{method}: a mixed batch is refused without a reason"
            return str(e)
        if m.forward_mixed_reference is not None:  # the library's own path, kept for comparison
            paths["mixed batch by the library's path"] = m.forward_mixed_reference(served, ids, mask, names).logits
    for path, mixed in paths.items():
        for i, n in enumerate(lengths):
            got = _row(run, mixed, i, n, ids.shape[1])
            diff = (got - alone[i]).abs().max().item()
            assert diff <= TOL, f"{method}: row {i} ({names[i]!r}) of a {path} differs from it served alone by {diff:.2e}"
    return "mixed"


def check_method(method: str, model: str, tmp_path: Path, method_config=None, pattern: str | None = None,
                 **train) -> Trained:
    """Every check above on one method and tiny model; returns the trained run."""
    t = train_tiny(method, model, method_config=method_config, **train)
    check_loss_falls(t)
    check_only_intended_parameters_change(t, pattern)
    check_parameter_counts(t)
    check_reloads_identically(t, tmp_path)
    t.serving = check_serving(method, model, tmp_path / "serving", method_config, run=t.run)
    return t
