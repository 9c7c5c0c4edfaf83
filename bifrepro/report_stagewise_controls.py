"""README summary of the stagewise controls (``results/stagewise_controls/``), from its files.

:func:`stagewise_controls_block` states, from ``shift.csv``, ``survival.csv`` and
``metrics.json``: how far the curriculum moved the induction transition and the largest
class-level influence change (with intervals over training seeds), whether the paper's
prediction (the influence change moves with the transition) holds here, which class-level
changes survive the partial correlation, and how often the sign of class-level BIF predicts the
effect of reweighting a class.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bifrepro.dynamics.stagewise_controls import shift_verdict

__all__ = ["stagewise_controls_block"]


def _interval(row: pd.Series) -> str:
    return (
        f"{row['mean']:+.0f} steps ({row['confidence']:.0%} t interval {row['t_low']:+.0f} to "
        f"{row['t_high']:+.0f}, bootstrap {row['boot_low']:+.0f} to {row['boot_high']:+.0f}; "
        f"{int(row['n'])} training seeds)"
    )


def stagewise_controls_block(results_dir: Path) -> str:
    """Markdown summary of ``results_dir/stagewise_controls/`` (raises FileNotFoundError when
    the experiment has not been run)."""
    folder = Path(results_dir) / "stagewise_controls"
    for name in ("metrics.json", "shift.csv"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} is missing: run `make reproduce-stagewise-controls` first"
            )
    saved = json.loads((folder / "metrics.json").read_text())
    m, exp = saved["metrics"], saved["experiment"]
    shifts = pd.read_csv(folder / "shift.csv")
    verdict = shift_verdict(shifts)
    by = shifts.set_index("quantity")
    t, c, s = (by.loc[q] for q in ("transition_step", "influence_change_step",
                                   "induction_self_change_step"))  # fmt: skip
    lines = [
        f"Curriculum (repeated-token sequences from step {exp['late_start_step']} instead of 0, "
        f"constant learning rate): the induction transition (induction score reaching "
        f"{exp.get('induction_level', float('nan')):g} nats) moves by {_interval(t)}; the largest "
        f"class-level influence change ({exp['normalize']}, max over class pairs between adjacent "
        f"checkpoints) moves by {_interval(c)}; the induction class's self-influence change moves "
        f"by {_interval(s)}.",
        f"The paper's prediction that influence changes move with the developmental transition "
        f"**{verdict['text']}** here (transition moved: {verdict['transition_moved']}; influence "
        f"change moved the same way: {verdict['influence_moved_same_direction']}; its interval "
        f"covers the transition's shift: {verdict['influence_shift_covers_transition_shift']}).",
        f"Chains healthy at {m['chains_healthy_fraction']:.0%} of the checkpoint x sampler-seed "
        f"jobs; transition detected in {m['transition_detected_fraction']:.0%} of the runs.",
    ]
    stage = []
    for arm in ("early", "late"):
        p = f"stage_change/{arm}/"
        if f"{p}ratio_of_means" in m:
            stage.append(
                f"{arm} arm {m[p + 'ratio_of_means']:.2g}× (across − before "
                f"{m[p + 'difference_mean']:+.4f}, t interval {m[p + 'difference_t_low']:+.4f} "
                f"to {m[p + 'difference_t_high']:+.4f}; larger in "
                f"{m[p + 'seeds_larger_across']:.0f} of {m[p + 'seeds']:.0f} training seeds)"
            )
    if stage:
        lines.append(
            "Mean |class-level change| over the class pairs across the transition (the checkpoints "
            "around it) against the interval as long just before it: " + "; ".join(stage) + "."
        )
    surv_path = folder / "survival.csv"
    if surv_path.is_file() and surv_path.stat().st_size > 1:
        surv = pd.read_csv(surv_path)
        sig = surv[surv["correlation_significant"] > 0]
        kept = surv[surv["survives_partial"] > 0]
        lines.append(
            f"Across the transition, {int(surv['correlation_significant'].sum())} (run, class "
            f"pair) changes exceed 2 s.e. as correlations ({len(sig)} distinct arm x pair), "
            f"{int(surv['survives_partial'].sum())} survive the partial correlation that removes "
            "the per-draw mean loss: "
            + (
                ", ".join(
                    f"{r.arm}: {r.query_class}→{r.train_class} ({r.survives_partial}/{r.runs} runs)"
                    for r in kept.itertuples()
                )
                or "none"
            )  # fmt: skip
            + "."
        )
    key = f"intervention/{exp['normalize']}"
    if f"{key}/own_class/agreement" in m:
        own, allp = f"{key}/own_class", f"{key}/all_pairs"
        part = "intervention/partial/all_pairs"
        lines.append(
            f"Intervention (one class's loss weight x{exp['intervention_factor']:g} for "
            f"{exp['intervention_window']} steps from step {exp['intervention_step']}, vs the same "
            f"batches unweighted): the sign of the class-level BIF before the window predicts the "
            f"change of that class's own query loss in {m[f'{own}/agreement']:.0%} of "
            f"{m[f'{own}/n']:.0f} cases (95% Wilson {m[f'{own}/low']:.0%}-{m[f'{own}/high']:.0%}), "
            f"of every query class's loss in {m[f'{allp}/agreement']:.0%} of {m[f'{allp}/n']:.0f} "
            f"({m[f'{allp}/low']:.0%}-{m[f'{allp}/high']:.0%}; partial correlation "
            f"{m.get(f'{part}/agreement', float('nan')):.0%})."
        )
    return "\n\n".join(lines)
