"""Label noise: which preference labels look flipped, scored from the forwards training already runs.

scores    `PairScores`: each training pair's policy and reference margins when it was first trained on
          (out of sample), and `duplicate_rows` (pairs whose score says nothing about their own label)
estimate  `estimate_flip_share`: the share of flipped labels with a 95% profile-likelihood interval, and each
          pair's probability of being flipped (a mirror mixture of the out-of-sample scores);
          `estimate_label_noise`: the estimate a run reports (flips claimed only where the fits to the policy alone
          and to the reference alone agree)

Pure Python and numpy: the trainer records the scores (`trainer/pair_scoring.py`), the report reads the estimate
(`report/suspected_flips.py`).
"""

from __future__ import annotations

from .estimate import FlipShareEstimate, estimate_flip_share, estimate_label_noise, flip_design
from .scores import PairScore, PairScores, duplicate_rows

__all__ = [
    "FlipShareEstimate",
    "PairScore",
    "PairScores",
    "duplicate_rows",
    "estimate_flip_share",
    "estimate_label_noise",
    "flip_design",
]
