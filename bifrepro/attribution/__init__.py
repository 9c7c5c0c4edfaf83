"""Attribution methods. Every score is ``[n_query, n_train]`` with positive = helpful."""

from bifrepro.attribution.bif import bif_scores

__all__ = ["bif_scores"]
