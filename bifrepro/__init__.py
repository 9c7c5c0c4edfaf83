"""bifrepro: Bayesian influence functions and stagewise data attribution.

The core estimator lives in :mod:`bifrepro.sampling` (SGLD around trained weights, recording every
observed item's loss on every draw) and :mod:`bifrepro.attribution` (scores from those traces).
Scores are ``[n_query, n_train]`` tensors where **positive = helpful**: upweighting the training
item lowers the query's loss.
"""

__version__ = "0.1.0"
