"""The base model a local job fine-tunes: a real one when it is on this machine, else a tiny stand-in.

Azure ML pulls the base model from its registry; a laptop (and CI) has no Hub access and no GPU.
``FTPILOT_LOCAL_BASE_MODEL`` may name a Hugging Face id already in the local cache or a model
folder; when it is unset or cannot be loaded offline, the job trains a small model of the family
the request names (``Phi-3-mini-4k-instruct`` -> ``phi3``), with random weights from a fixed seed
and a byte-level BPE tokenizer trained on the job's own training data. That model learns nothing
useful, but every step around it (chat template, LoRA, MLflow, serving) is the real one, in seconds.

Stand-ins are built once per family, data and configuration, under ``data_dir/base_models/``,
so retrying a job or training again on the same data starts from the same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.platform.local.chat_template import END_OF_TEXT, PHI3_TEMPLATE, SPECIAL_TOKENS, STOP_TOKENS

log = logging.getLogger(__name__)

# Substrings of a registry model name -> transformers model type; first match wins, llama otherwise.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("phi-3", "phi3"),
    ("phi3", "phi3"),
    ("mixtral", "mistral"),
    ("mistral", "mistral"),
    ("qwen", "qwen2"),
    ("llama", "llama"),
)
DEFAULT_FAMILY = "llama"

# Small enough to train 50 LoRA steps in seconds on two CPU cores, big enough to be a real transformer.
# initializer_range: LoRA leaves the random embeddings, norms and lm_head frozen, and the final norm
# bounds the hidden state, so with transformers' default init (0.02) no adapter can make a logit
# stand out: the tuned model stays near-uniform and samples noise (eval loss 6.0 -> 4.4, 40 steps).
# At 0.1 (about 1/sqrt(hidden_size), the scale of a trained model) the same steps reach 1.7 and the
# model answers in its training data's words.
TINY_CONFIG = {
    "initializer_range": 0.1,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
TINY_VOCAB = 4096
SEED = 0


@dataclass(frozen=True)
class BaseModel:
    """Where ``from_pretrained`` finds the model and tokenizer, and a line saying what it is."""

    path: str
    source: str


def family(base_model: str) -> str:
    """The transformers model type standing in for a registry model name."""
    name = base_model.lower()
    return next((model_type for key, model_type in FAMILIES if key in name), DEFAULT_FAMILY)


def resolve(requested: str, configured: str | None, texts: Sequence[str], cache: Path) -> BaseModel:
    """The configured model when it loads offline, else the cached (or newly built) stand-in."""
    if configured:
        problem = _offline_problem(configured)
        if not problem:
            return BaseModel(configured, f"{configured} (FTPILOT_LOCAL_BASE_MODEL)")
        log.warning("FTPILOT_LOCAL_BASE_MODEL=%s cannot load offline (%s); using a tiny stand-in", configured, problem)
    model_type = family(requested)
    folder = cache / f"{model_type}-{_cache_key(model_type, texts)}"
    if not folder.is_dir():
        _build(model_type, texts, folder)
    return BaseModel(str(folder), f"tiny random {model_type} standing in for {requested} ({folder.name})")


def _offline_problem(name: str) -> str:
    """'' when the model's config and tokenizer load without the network, else why not."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return ""


def _cache_key(model_type: str, texts: Sequence[str]) -> str:
    data = hashlib.sha256()
    for text in texts:
        data.update(text.encode())
        data.update(b"\0")
    recipe = {
        "family": model_type,
        "data": data.hexdigest(),
        "config": TINY_CONFIG,
        "vocab": TINY_VOCAB,
        "seed": SEED,
        "template": PHI3_TEMPLATE,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _build(model_type: str, texts: Sequence[str], folder: Path) -> None:
    """Train the tokenizer, initialise the model, and publish both atomically (a rename)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = _train_tokenizer(texts)
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **TINY_CONFIG
    )
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(STOP_TOKENS)
    model.generation_config.pad_token_id = eos

    staging = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(folder)
    except OSError:  # built concurrently by another job: theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built a tiny %s base model (%d tokens) in %s", model_type, len(tokenizer), folder)


def _train_tokenizer(texts: Sequence[str]):  # -> PreTrainedTokenizerFast (imported lazily)
    """Byte-level BPE on the training text, with Phi-3's chat markers as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        extra_special_tokens=[token for token in SPECIAL_TOKENS if token != END_OF_TEXT],
        model_max_length=TINY_CONFIG["max_position_embeddings"],
        chat_template=PHI3_TEMPLATE,
    )
