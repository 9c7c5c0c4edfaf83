"""README block of the language-scale experiment, generated from ``results/language_scale/``.

:func:`language_scale_block` states which cross-form links reproduce at which model size: the
per-category P@1 with its intervals over queries and over sampler seeds, the models' perplexity
and transfer probe, the seeds' agreement, and the poster's six examples, each with its pooled
rank and whether it is resolved beyond Monte Carlo noise. A category *reproduces* at a size when
the lower end of its P@1 interval over queries lies above the chance precision.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

__all__ = ["language_scale_block", "reproduced_categories"]

#: the order of the benchmark categories in the table
CATEGORIES = (
    "numbers",
    "pronouns",
    "verbs",
    "nouns",
    "countries",
    "senses",
    "if/then",
    "objectives",
    "all",
)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run python -m experiments.language_scale)")
    return pd.read_csv(path)


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def reproduced_categories(table: pd.DataFrame) -> dict[str, list[str]]:
    """Size -> categories whose P@1 interval over queries lies above chance."""
    out: dict[str, list[str]] = {}
    for size, grp in table.groupby("size", sort=False):
        ok = grp[
            (grp["category"] != "all") & (grp["precision_at_1_q_low"] > grp["chance_precision"])
        ]
        out[str(size)] = [c for c in CATEGORIES if c in set(ok["category"])]
    return out


def language_scale_block(results_dir: Path) -> str:
    """Markdown: per-category cross-form P@1 per size, seed agreement, the six examples."""
    folder = Path(results_dir) / "language_scale"
    table = _read(folder / "benchmark.csv")
    agree = _read(folder / "seed_agreement.csv")
    links = _read(folder / "links.csv")
    members = _read(folder / "members.csv")
    sizes = list(dict.fromkeys(table["size"]))
    lines = [
        "Cross-form token links across model sizes (`results/language_scale/`): BIF per token, "
        "P@1 of a translation / other form among all observed training tokens, mean over queries "
        "[95% CI over queries] (s.d. over sampler seeds); translations never share a training "
        "sequence.",
        "",
        "| category | " + " | ".join(sizes) + " |",
        "| --- |" + " --- |" * len(sizes),
    ]
    for cat in CATEGORIES:
        cells = []
        for size in sizes:
            r = table[(table["size"] == size) & (table["category"] == cat)]
            if r.empty or pd.isna(r.iloc[0]["precision_at_1"]):
                cells.append("–")
                continue
            r = r.iloc[0]
            cells.append(
                f"{_f(r['precision_at_1'])} [{_f(r['precision_at_1_q_low'])}, "
                f"{_f(r['precision_at_1_q_high'])}] ({_f(r['precision_at_1_seed_sd'])}), "
                f"n={int(r['num_queries'])}"
            )
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    lines.append("")
    for m in members.itertuples():
        lines.append(
            f"- {m.size}: {m.num_parameters / 1e6:.2f}M parameters, held-out perplexity "
            f"{m.heldout_perplexity:.2f}; count-fact probe (right number among the 8 in the "
            f"probe's form, chance 0.12): {m.probe_seen_choice:.2f} in the forms trained, "
            f"{m.probe_heldout_choice:.2f} in the held-out form (greedy next token "
            f"{m.probe_seen_accuracy:.2f} / {m.probe_heldout_accuracy:.2f})"
        )
    if "any_form_precision_at_1" in table:
        overall = table[table["category"] == "all"]
        lines += [
            "",
            "Sanity check, any form (the query's own word counts too), P@1 over all "
            "categories: "
            + ", ".join(f"{r.size} {r.any_form_precision_at_1:.2f}" for r in overall.itertuples())
            + ".",
        ]
    per_size = agree.groupby("size", sort=False)["pearson"].mean()
    text = ", ".join(f"{s} {v:.2f}" for s, v in per_size.items())
    if "draws_for_agreement_0.5" in agree:
        need = agree.groupby("size", sort=False)["draws_for_agreement_0.5"].median()
        text += (
            " (draws per seed a 0.5 agreement would need, extrapolated: "
            + ", ".join(f"{s.split(' ')[0]} ~{v:.0f}" for s, v in need.items() if pd.notna(v))
            + ")"
        )
    lines += [
        "",
        "Seed-to-seed agreement of the token score matrices (Pearson, mean over seed "
        f"pairs): {text}.",
    ]
    repro = reproduced_categories(table)
    lines += [
        "",
        "Categories whose P@1 is above chance (lower end of the 95% CI over queries above "
        "the chance precision):",
        "",
    ]
    for size in sizes:
        got = repro.get(size, [])
        lines.append(f"- {size}: above chance in {', '.join(got) if got else 'no category'}.")
    lines += [
        "",
        "The poster's examples (pooled draws of every seed; rank of the best cross-form "
        "link; resolved = its gap to the best other candidate exceeds 1.96 standard errors):",
        "",
    ]
    ex = links[links["example"].fillna("") != ""]
    for name, grp in ex.groupby("example", sort=False):
        parts = []
        for r in grp.itertuples():
            noise = "resolved" if r.resolved else "not resolved"
            rank = "–" if pd.isna(r.rank) else str(int(r.rank))
            # first, but within noise of the runner-up, is not a reproduction
            outcome = r.outcome
            if outcome == "reproduced" and not r.resolved:
                outcome = "first only within noise"
            parts.append(f"{r.size.split(' ')[0]}: {outcome}, rank {rank} ({noise})")
        lines.append(f"- {name} ({grp.iloc[0]['surface']}): " + "; ".join(parts))
    return "\n".join(lines)
