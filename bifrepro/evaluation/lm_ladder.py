"""A ladder of embedded causal LMs on the separated corpus: built, trained once, checked.

:func:`ladder_corpus` generates the corpus of :mod:`bifrepro.data.separated_text` (training
sentences, a held-out set for the perplexity, the benchmark queries), trains its byte-level BPE
tokenizer (cached) and tokenises everything one sentence per sequence. :func:`ladder_member`
trains one Llama-style member of the ladder (:class:`~bifrepro.evaluation.lm_scaling.LMSize`,
the family of ``experiments/compute_lm.py``) once, caches it with ``save_pretrained`` and loads
it through ``from_pretrained``. Before attributing, :func:`heldout_perplexity` and
:func:`probe_accuracy` say what each member learned: its held-out perplexity, and next-token
accuracy on the count facts, in the forms training shows and in the form it holds out (transfer
of a fact to its translation).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bifrepro.data.separated_text import (
    FORMS,
    NUMBERS,
    ProbeItem,
    SeparatedQuery,
    generate_separated_corpus,
    pack_separated,
    probe_items,
    separated_queries,
)
from bifrepro.data.text import TokenizedSequences
from bifrepro.data.tokenizer import load_or_train_tokenizer, load_tokenizer, texts_fingerprint
from bifrepro.evaluation.lm_scaling import LMSize, llama_params
from bifrepro.models.lm import CausalLMConfig, LMTrainConfig
from bifrepro.training.lm import embedded_causal_lm

__all__ = [
    "LadderCorpus",
    "ladder_corpus",
    "ladder_member",
    "heldout_perplexity",
    "probe_accuracy",
    "llama_params",
]


@dataclass
class LadderCorpus:
    """The tokenised separated corpus shared by every member of the ladder."""

    tokenizer: Any
    train: TokenizedSequences
    heldout: TokenizedSequences
    queries: TokenizedSequences
    query_info: list[SeparatedQuery]
    #: cache key of the tokenizer and the training sequences (part of each member's key)
    data_key: str


def ladder_corpus(
    num_documents: int,
    seed: int,
    num_heldout: int,
    vocab_size: int,
    seq_len: int,
    cache_dir: str | Path,
) -> LadderCorpus:
    """Training, held-out and query sequences (one sentence each), with one concept table."""
    docs = generate_separated_corpus(num_documents, seed)
    query_info = separated_queries()
    query_texts = {q.text.text for q in query_info}
    heldout = [
        d for d in generate_separated_corpus(num_heldout, seed + 1000) if d.text not in query_texts
    ]
    texts = [d.text for d in docs] + sorted(query_texts)
    tok, tok_path = load_or_train_tokenizer(texts, cache_dir, vocab_size)
    index: dict[str, int] = {}
    train = pack_separated(docs, tok, seq_len, index)
    held = pack_separated(heldout, tok, seq_len, index)
    queries = pack_separated([q.text for q in query_info], tok, seq_len, index)
    train.concept_names = held.concept_names = queries.concept_names
    key = texts_fingerprint([tok_path.name], data=_fingerprint(train), seq_len=seq_len)
    return LadderCorpus(tok, train, held, queries, query_info, key)


def _fingerprint(seqs: TokenizedSequences) -> str:
    h = hashlib.sha256(seqs.input_ids.numpy().tobytes())
    h.update(seqs.attention_mask.numpy().tobytes())
    return h.hexdigest()[:16]


def ladder_member(
    corpus: LadderCorpus,
    size: LMSize,
    train: LMTrainConfig,
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """One member trained on ``corpus.train`` once (cached), loaded via ``from_pretrained``.

    Returns the model (eval mode) and its info: name, parameters, training summary, path.
    """
    cfg = CausalLMConfig(
        name=f"ladder-{size.name}",
        hidden_size=size.hidden_size,
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        intermediate_size=size.intermediate_size,
        max_position_embeddings=max(32, corpus.train.seq_len),
        vocab_size=len(corpus.tokenizer),
        train=train,
    )
    ids, mask = corpus.train.input_ids, corpus.train.attention_mask
    model, path, summary = embedded_causal_lm(
        cfg, corpus.tokenizer, ids, mask, cache_dir, corpus.data_key, device, progress
    )
    corpus.tokenizer = load_tokenizer(path)  # the tokenizer as saved beside the model
    info = {
        "size": size.name,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "hidden_size": size.hidden_size,
        "num_layers": size.num_layers,
        "train_steps": train.steps,
        "lm_train_seconds": float(summary["train_seconds"]),
        "lm_final_loss": float(summary["final_loss"]),
        "model_path": str(path),
    }
    return model, info


def _token_nll(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]`` next-token NLL (0 where the target is padding)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return nll * mask[:, 1:]


@torch.no_grad()
def heldout_perplexity(
    model: torch.nn.Module, seqs: TokenizedSequences, batch_size: int = 256
) -> dict[str, float]:
    """Perplexity ``exp(mean token NLL)`` over the real predicted tokens of ``seqs``, with the
    standard error of the mean NLL over sequences (Monte Carlo error of the held-out sample)."""
    device = next(model.parameters()).device
    per_seq, counts = [], []
    for i in range(0, len(seqs), batch_size):
        ids = seqs.input_ids[i : i + batch_size].to(device)
        mask = seqs.attention_mask[i : i + batch_size].to(device)
        nll = _token_nll(model, ids, mask)
        per_seq.append(nll.sum(1).cpu())
        counts.append(mask[:, 1:].sum(1).cpu())
    tot, cnt = torch.cat(per_seq).double(), torch.cat(counts).double()
    mean = float(tot.sum() / cnt.sum())
    ratio = tot / cnt.clamp_min(1)
    se = float(ratio.std() / math.sqrt(len(ratio))) if len(ratio) > 1 else math.nan
    return {"heldout_nll": mean, "heldout_nll_se": se, "heldout_perplexity": math.exp(mean)}


@torch.no_grad()
def probe_accuracy(
    model: torch.nn.Module, tokenizer: Any, items: list[ProbeItem] | None = None
) -> dict[str, float]:
    """Two probes of the count facts, split by forms seen in training and the held-out form
    (binomial standard errors):

    * ``accuracy`` — greedy decoding after ``prefix`` produces the number's tokens up to its
      first non-blank one (a digit may follow a lone space token). An English frame allows a
      digit or a word, so a model that knows the fact but picks the other form misses;
    * ``choice`` — the right number is the model's first choice among the eight numbers *in the
      probe's form* (chance 1/8): does it know the count in that form, whatever form it prefers?
    """
    items = probe_items() if items is None else items
    device = next(model.parameters()).device
    hits: dict[tuple[bool, str], list[float]] = {}
    for it in items:
        n_prefix = len(tokenizer(it.prefix, add_special_tokens=False)["input_ids"])

        def encode(word: str, prefix: str = it.prefix) -> list[int]:
            return tokenizer(prefix + " " + word, add_special_tokens=False)["input_ids"]

        full = encode(it.target)
        last = next(j for j in range(n_prefix, len(full)) if tokenizer.decode([full[j]]).strip())
        ids = torch.tensor([[tokenizer.bos_token_id, *full[: last + 1]]], device=device)
        logits = model(input_ids=ids).logits[0]
        pred = logits[n_prefix : last + 1].argmax(-1)  # position j predicts token j + 1
        target = ids[0, n_prefix + 1 : last + 2]
        hits.setdefault((it.held_out, "accuracy"), []).append(float(bool((pred == target).all())))
        words = [forms[FORMS.index(it.form)] for forms in NUMBERS.values()]
        cands = sorted({encode(w)[last] for w in words if len(encode(w)) > last})
        best = cands[int(logits[last, cands].argmax())]
        hits.setdefault((it.held_out, "choice"), []).append(float(best == full[last]))
    out: dict[str, float] = {}
    for held, name in ((False, "seen"), (True, "heldout")):
        for kind in ("accuracy", "choice"):
            v = torch.tensor(hits.get((held, kind), []), dtype=torch.float64)
            acc = float(v.mean()) if len(v) else math.nan
            se = math.sqrt(acc * (1 - acc) / len(v)) if len(v) else math.nan
            out[f"probe_{name}_{kind}"] = acc
            out[f"probe_{name}_{kind}_se"] = se
        out[f"probe_{name}_n"] = float(len(hits.get((held, "accuracy"), [])))
    return out
