"""How many preference labels look flipped: a share with a 95% interval, and each pair's chance of being flipped.

The inputs are out-of-sample scores of each pair on the label as given, taken when the pair is first trained on
(before the update that uses it; see `scores.PairScores`): the policy's margin ``m = log pi(y_w|x) - log pi(y_l|x)``
and, with a reference, the implicit-reward margin ``h = m - m_ref``. The policy has then learned from other pairs
only, so these scores do not depend on the pair's own label, and swapping chosen and rejected negates them exactly.
Out-of-sample predictions held against the given labels are what confident learning (Northcutt, Jiang and Chuang,
JAIR 2021) estimates label noise from; the mirror gives the model directly. With rho the share of flipped pairs and
f the density of correctly labelled pairs' score vectors v,

    p(v) = (1 - rho) f(v) + rho f(-v).

Conditioning on the unordered pair {v, -v} removes f except through c(v) = f(v) / (f(v) + f(-v)), the chance that
a correctly labelled pair shows orientation v rather than -v:

    P(v observed | {v, -v}) = (1 - rho) c(v) + rho (1 - c(v)).

c(-v) = 1 - c(v) for any f, so c is a sigmoid of an odd function of v, modelled as linear in odd features: m, h,
m|m|, h|h| (skewed score distributions) and u m, u h (the policy separates pairs better as training progress u
goes from 0 to 1), each scaled to unit size. EM-free maximum likelihood (Fisher scoring) fits the weights at each
rho; rho is kept in [0, 1/2], which fixes the orientation (the majority of labels is right). So rho is what the
wrong-orientation share tends to where the scores are most decisive: confident disagreements are flips, uncertain
ones are not counted as flips. The interval is the profile-likelihood one (likelihood ratio against chi-square(1)
at 95%, 3.84), which handles the boundary rho = 0 of clean data. When the scores decide nothing (a policy that
has not learned yet) the likelihood is flat in rho and the interval is wide: honestly uninformative, never
narrowed by assumption. Confidently held errors of the policy on correctly labelled pairs are counted as flips:
the estimate is of labels the policy, trained on the rest of the data, confidently disagrees with.
`benchmarks/RESULTS.md` measures coverage against planted flips.

`estimate_label_noise` is what a run reports. Every fit counts the confident errors of its scores on correctly
labelled pairs as flips, and the scores err confidently in different ways: the policy's margin (and its learned part
h = m - m_ref) comes from a model in motion, with interference between similar pairs trained on just before (on the
embedded default's clean data the fit to h alone finds 28-36% "flips"; on a pretrained chat model with 30% of labels
flipped, the fit to m and h together put the whole interval above 30%), while the reference's margin is untouched by
training but inherits a pretrained model's confident mistakes (11-12% "flips" on clean chat data). A run therefore
claims flipped labels only as far as three fits agree: the interval's lower end is the smallest of the lower ends of
the fit to both training-time scores (m, h), the fit to the policy's margin alone (m) and the fit to the reference's
margin alone; its upper end and the point estimate are the fit to both. With a reference model that separates the
pairs well (the embedded default) the fits agree; on a pretrained chat model trained briefly
(benchmarks/RESULTS.md, "Suspected flips") clean data read "undetermined" (the interval starts at 0), not "flipped".

Pure numpy; no model, no TRL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["CHI2_1_95", "FlipShareEstimate", "estimate_flip_share", "estimate_label_noise", "flip_design"]

CHI2_1_95 = 3.841458820694124  # the 95% quantile of chi-square with one degree of freedom
_GRID = np.linspace(0.0, 0.5, 201)  # rho values the profile likelihood is evaluated at (steps of 0.25 points)
_MIN_PAIRS = 20  # below this the mixture is not fitted


@dataclass(frozen=True)
class FlipShareEstimate:
    """The estimated share of flipped pairs among `n` scored pairs, with its 95% interval [low, high]."""

    share: float
    low: float
    high: float
    n: int
    posterior: tuple[float, ...]  # per scored pair (input order): the probability its label is flipped
    # Per pair: 1 - c(v), the chance that a correctly labelled pair would show the other orientation: how strongly
    # the policy disagrees with the label. Ranks pairs like `posterior` does, and still ranks them when share = 0.
    disagreement: tuple[float, ...] = ()

    @property
    def count(self) -> int:
        """The estimated number of flipped pairs among the scored ones."""
        return round(self.share * self.n)

    @property
    def clean(self) -> bool:
        """True when the data give no evidence of flipped labels: the interval reaches 0."""
        return self.low <= 0.0


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))


def _likelihood(design: np.ndarray, coef: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """(c(v), P(v observed | {v, -v})) per pair."""
    c = _sigmoid(design @ coef)
    return c, (1.0 - rho) * c + rho * (1.0 - c)


def _fit(design: np.ndarray, rho: float, coef: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
    """The weights at a fixed rho (Fisher scoring, every step an ascent, a small ridge so a perfectly separating
    score converges). Returns (coef, log-likelihood)."""
    ridge = 1e-3

    def objective(theta: np.ndarray) -> float:
        _, likelihood = _likelihood(design, theta, rho)
        return float(np.sum(np.log(np.maximum(likelihood, 1e-300))) - ridge * float(theta @ theta))

    current = objective(coef)
    for _ in range(iters):
        c, likelihood = _likelihood(design, coef, rho)
        slope = (1.0 - 2.0 * rho) * c * (1.0 - c)  # d P / d (v . coef)
        grad = design.T @ (slope / np.maximum(likelihood, 1e-300)) - 2.0 * ridge * coef
        weight = slope**2 / np.maximum(likelihood * (1.0 - likelihood), 1e-12)
        info = (design * weight[:, None]).T @ design + 2.0 * ridge * np.eye(coef.size)
        step = np.linalg.solve(info, grad)
        for _halving in range(30):
            value = objective(coef + step)
            if value >= current:
                break
            step = step / 2.0
        else:
            break
        converged = value - current < 1e-7
        coef, current = coef + step, value
        if converged:
            break
    _, likelihood = _likelihood(design, coef, rho)
    return coef, float(np.sum(np.log(np.maximum(likelihood, 1e-300))))


def flip_design(
    policy_margins: Sequence[float],
    reference_margins: Sequence[float | None] | None = None,
    progress: Sequence[float] | None = None,
) -> np.ndarray:
    """The odd features of each pair's scores (rows: pairs): m, m|m| and u m, and with reference margins the same
    of h = m - m_ref; each column scaled to unit root-mean-square. NaN rows mark pairs without finite scores."""
    m = np.asarray(policy_margins, dtype=np.float64)
    u = np.zeros_like(m) if progress is None else np.asarray(progress, dtype=np.float64)
    scores = [m]
    if reference_margins is not None:
        ref = np.asarray([np.nan if r is None else r for r in reference_margins], dtype=np.float64)
        scores.append(m - ref)
    columns = []
    for x in scores:
        columns += [x]
        if np.ptp(u[np.isfinite(u)]) > 0.05 if np.isfinite(u).any() else False:
            columns.append(u * x)
    design = np.stack(columns, axis=1)
    finite = np.isfinite(design).all(axis=1)
    scale = np.sqrt(np.mean(design[finite] ** 2, axis=0)) if finite.any() else np.ones(design.shape[1])
    design = design / np.where(scale > 0, scale, 1.0)
    design[~finite] = np.nan
    return np.asarray(design)


def estimate_flip_share(design: np.ndarray | Sequence[float], *, iters: int = 50) -> FlipShareEstimate | None:
    """Estimate the flipped share from the pairs' odd score features (`flip_design`; a plain sequence of margins is
    taken as one score). Returns None when fewer than 20 pairs have finite, not all-zero scores (nothing reliable
    can be said); such pairs (e.g. chosen and rejected scoring alike) carry no orientation and are left out."""
    full = np.asarray(design, dtype=np.float64)
    if full.ndim == 1:
        full = flip_design(full.tolist())
    keep = np.isfinite(full).all(axis=1) & (np.abs(full).sum(axis=1) > 0)
    x = full[keep]
    if x.shape[0] < _MIN_PAIRS:
        return None
    # The profile likelihood of rho over a grid, each point warm-started from its neighbour.
    coefs, profile = [], []
    coef = np.zeros(x.shape[1])
    coef[0] = 1.0
    for rho in _GRID:
        coef, ll = _fit(x, float(rho), coef, iters)
        coefs.append(coef)
        profile.append(ll)
    profile_arr = np.asarray(profile)
    best = int(np.argmax(profile_arr))
    rho_hat = float(_GRID[best])
    inside = _GRID[2.0 * (profile_arr[best] - profile_arr) <= CHI2_1_95]
    low, high = float(inside.min()), float(inside.max())
    c, likelihood = _likelihood(x, coefs[best], rho_hat)
    posterior = np.full(full.shape[0], np.nan)
    posterior[keep] = rho_hat * (1.0 - c) / np.maximum(likelihood, 1e-300)
    disagreement = np.full(full.shape[0], np.nan)
    disagreement[keep] = 1.0 - c
    return FlipShareEstimate(
        share=rho_hat,
        low=low,
        high=high,
        n=int(x.shape[0]),
        posterior=tuple(float(v) for v in posterior),
        disagreement=tuple(float(v) for v in disagreement),
    )


def estimate_label_noise(
    policy_margins: Sequence[float],
    reference_margins: Sequence[float | None] | None = None,
    progress: Sequence[float] | None = None,
) -> FlipShareEstimate | None:
    """The flipped share a run reports, from its training-time scores (`scores.PairScores`, input order kept).

    Without reference margins: `estimate_flip_share` of the policy's margins. With them: the fit to both scores
    (policy margin m and learned part h = m - m_ref), whose interval starts no higher than the fit to m alone and the
    fit to the reference's margins alone do (see the module docstring: flips are claimed only where every fit sees
    them).
    """
    joint = estimate_flip_share(flip_design(policy_margins, reference_margins, progress))
    if joint is None or reference_margins is None:
        return joint
    checks = (
        estimate_flip_share(flip_design(policy_margins, None, progress)),
        estimate_flip_share(flip_design([math.nan if r is None else float(r) for r in reference_margins])),
    )
    low = min([joint.low] + [check.low for check in checks if check is not None])
    return joint if low >= joint.low else replace(joint, low=low)
