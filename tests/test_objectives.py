"""Rank classification: the fast paths give the same numbers as the plain computation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peft_bench.engine.objectives import RankClassificationObjective
from peft_bench.engine.prepare import prepare
from conftest import tiny_spec


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "lora"])
def test_fast_paths_equal_plain_scoring(method):
    run = prepare(tiny_spec(method, "tiny-llama", n_test=16))
    model = run.model.eval()
    feats = [run.test_dl.dataset[i] for i in range(8)]
    # single-token label words (bytes "a"/"b", no prefix) so the prompt-only path applies
    task = dataclasses.replace(run.task, label_words=("a", "b"), target_prefix="")
    obj = RankClassificationObjective(task, run.ctx.tokenizer, 64)
    assert obj.single_token_labels
    fast = obj.collate(feats, training=False)
    assert fast["input_ids"].shape[0] == 8  # prompt only: one row per example

    plain = RankClassificationObjective(task, run.ctx.tokenizer, 64)
    plain._keep_ok = False  # full logits, sliced afterwards
    general = plain.collate(feats, training=True)  # prompt + gold label: the general path's layout
    with torch.inference_mode():
        fast_scores = obj.scores(model, fast)
        assert obj._keep_ok is True  # the model took logits_to_keep
        # the general path on (prompt + each label) rows, with all logits computed
        rows = []
        for c in range(2):
            cand = [dict(f, label=c) for f in feats]
            b = plain.collate(cand, training=True)
            sums, _ = plain._target_sums(model, b)
            rows.append(sums)
        plain_scores = torch.stack(rows, dim=1)
        torch.testing.assert_close(fast_scores, plain_scores, atol=1e-5, rtol=0)
        # training loss with and without logits_to_keep
        torch.testing.assert_close(obj.loss(model, general), plain.loss(model, general), atol=1e-5, rtol=0)


def test_multi_token_labels_use_the_general_path():
    """Multi-token label words: each score equals the log-likelihood of the label's tokens after
    the prompt, computed independently, one unpadded sequence at a time with a plain forward."""
    run = prepare(tiny_spec("lora", "tiny-llama", n_test=16))
    obj = run.objective
    assert not obj.single_token_labels  # byte tokens: " bad" / " good" are several tokens
    feats = [run.test_dl.dataset[i] for i in range(4)]
    batch = obj.collate(feats, training=False)
    assert batch["input_ids"].shape[0] == 4 * 2
    model = run.model.eval()
    with torch.inference_mode():
        scores = obj.scores(model, batch)
        assert scores.shape == (4, 2)
        for i, f in enumerate(feats):
            for c, word in enumerate(run.task.label_words):
                target = run.ctx.tokenizer(run.task.target_prefix + word, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([f["input_ids"] + target])
                logp = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float().log_softmax(-1)
                logp = logp[-ids.shape[1]:]  # the sequence's own positions (after any virtual tokens)
                n = len(f["input_ids"])
                want = sum(logp[n - 1 + k, t].item() for k, t in enumerate(target))
                assert abs(scores[i, c].item() - want) < 1e-4, (i, c, scores[i, c].item(), want)
        assert torch.equal(obj.predict(model, batch), scores.argmax(-1))
