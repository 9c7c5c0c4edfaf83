"""Label agreement within confusable groups, on a hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.evaluation.agreement import ALL_GROUPS, group_agreement, group_agreement_table

# training labels: 0 0 1 1 2 3; groups: tops = {0, 1}, shoes = {2, 3}; class 4 in no group
TRAIN = torch.tensor([0, 0, 1, 1, 2, 3])
GROUPS = {"tops": (0, 1), "shoes": (2, 3)}
QUERY = torch.tensor([0, 2, 4])
SCORES = torch.tensor(
    [
        [0.1, 0.2, 0.9, 0.8, 0.0, -1.0],  # query class 0: top-1 item 2 (class 1, same group)
        [0.0, 0.0, 0.0, 0.0, 0.9, 0.8],  # query class 2: top-1 item 4 (exact), then item 5 (3)
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # query class 4: in no group
    ]
)


def test_group_agreement_by_hand() -> None:
    k1 = group_agreement(SCORES, TRAIN, QUERY, 1, GROUPS)
    assert k1["exact"][:2].tolist() == [0.0, 1.0]
    assert k1["group_other"][:2].tolist() == [1.0, 0.0]
    assert k1["group"].tolist() == [0, 1, -1]
    assert math.isnan(k1["exact"][2]) and math.isnan(k1["group_other"][2])
    k2 = group_agreement(SCORES, TRAIN, QUERY, 2, GROUPS)
    # query 0: items 2, 3 (both class 1): exact 0, look-alike 1; query 1: items 4 (2), 5 (3)
    assert k2["exact"][:2].tolist() == [0.0, 0.5]
    assert k2["group_other"][:2].tolist() == [1.0, 0.5]
    k4 = group_agreement(SCORES, TRAIN, QUERY, 4, GROUPS)
    # query 0: items 2, 3, 1, 0 -> classes 1 1 0 0: exact 0.5, look-alike 0.5
    assert k4["exact"][0] == 0.5 and k4["group_other"][0] == 0.5


def test_group_agreement_rejects_overlapping_groups() -> None:
    with pytest.raises(ValueError, match="overlap"):
        group_agreement(SCORES, TRAIN, QUERY, 1, {"a": (0, 1), "b": (1, 2)})


def test_group_agreement_table_rows_and_chance() -> None:
    table = group_agreement_table({"m": SCORES}, TRAIN, QUERY, GROUPS, ks=(1, 2), n_boot=200)
    assert set(table.group) == {ALL_GROUPS, "tops", "shoes"}
    pooled = table[(table.group == ALL_GROUPS) & (table.k == 1)].set_index("metric")
    assert pooled.at["exact", "value"] == pytest.approx(0.5)
    assert pooled.at["group_other", "value"] == pytest.approx(0.5)
    assert (pooled.n_queries == 2).all()  # the query of class 4 is in no group
    # chance: query 0 (class 0) -> 2/6 exact, 2/6 look-alike; query 1 (class 2) -> 1/6, 1/6
    assert pooled.at["exact", "chance"] == pytest.approx((2 / 6 + 1 / 6) / 2)
    assert pooled.at["group_other", "chance"] == pytest.approx((2 / 6 + 1 / 6) / 2)
    tops = table[(table.group == "tops") & (table.k == 2)].set_index("metric")
    assert tops.at["exact", "value"] == 0.0 and tops.at["group_other", "value"] == 1.0
    assert (table.ci_low <= table.value + 1e-12).all() and (
        table.value <= table.ci_high + 1e-12
    ).all()
    # no query in a group: an empty table, not an error
    assert group_agreement_table({"m": SCORES[2:]}, TRAIN, QUERY[2:], GROUPS, ks=(1,)).empty
