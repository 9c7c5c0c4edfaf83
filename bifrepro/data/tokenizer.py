"""A byte-level BPE tokenizer trained here with ``tokenizers``, saved the Hugging Face way.

The tokenizer is wrapped as a :class:`transformers.PreTrainedTokenizerFast` and written with
``save_pretrained``, so it reloads through ``AutoTokenizer.from_pretrained(path)`` — the same call
that loads a Pythia tokenizer. Byte-level BPE (GPT-2 / Pythia style) never produces an unknown
token; ``add_prefix_space=True`` makes a word at the start of a document the same token as the
word mid-sentence (``"Ġthree"``), which matters when tokens are compared across sequences.

Special tokens: ``<|endoftext|>`` is BOS and EOS (as in GPT-2 and Pythia), ``<pad>`` pads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

__all__ = [
    "BOS_TOKEN",
    "PAD_TOKEN",
    "train_bpe_tokenizer",
    "load_tokenizer",
    "load_or_train_tokenizer",
    "texts_fingerprint",
]

log = logging.getLogger(__name__)

BOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Deterministic for the same texts and settings. Offsets are trimmed to exclude the leading
    space, so ``return_offsets_mapping`` points at the word itself.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 256 + 2:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs >= 258")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        pad_token=PAD_TOKEN,
        add_prefix_space=True,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(
    path: str | os.PathLike[str], revision: str | None = None
) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained`` (a local folder or a Hugging Face model name).

    A tokenizer without a pad token (Pythia's) gets its EOS token as pad token.
    """
    tok = AutoTokenizer.from_pretrained(str(path), revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token
    return tok


def texts_fingerprint(texts: Sequence[str], **settings: object) -> str:
    """Short hash of the texts and settings (cache key)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for t in texts:
        h.update(t.encode("utf-8", errors="replace"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def load_or_train_tokenizer(
    texts: Sequence[str],
    cache_dir: str | os.PathLike[str],
    vocab_size: int = 2048,
    min_frequency: int = 2,
) -> tuple[PreTrainedTokenizerFast, Path]:
    """The tokenizer cached under ``cache_dir/tokenizer-<hash>`` (trained and saved if missing).

    Returns the tokenizer *as reloaded from disk* and its folder, so the cached and the fresh path
    behave identically.
    """
    key = texts_fingerprint(texts, vocab_size=vocab_size, min_frequency=min_frequency)
    path = Path(cache_dir) / f"tokenizer-{key}"
    if not (path / "tokenizer.json").exists():
        log.info(
            "training a byte-level BPE tokenizer (vocab %d) on %d texts", vocab_size, len(texts)
        )
        tok = train_bpe_tokenizer(texts, vocab_size, min_frequency)
        tmp = path.with_name(path.name + ".tmp")
        tok.save_pretrained(str(tmp))
        if not path.exists():  # another process may have finished first
            os.replace(tmp, path)
    return load_tokenizer(path), path
