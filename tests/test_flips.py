"""The label-noise estimate and the per-pair training-time scores (`trl_conservative.flips`): pure, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trl_conservative.flips.estimate import CHI2_1_95, estimate_flip_share, flip_design
from trl_conservative.flips.scores import PairScores, duplicate_rows


def _mixture(n: int, rho: float, seed: int, *, mean: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Margins of correctly labelled pairs ~ N(mean, 1); a random `rho` share of them negated (flipped)."""
    rng = np.random.default_rng(seed)
    x = mean + rng.normal(size=n)
    flipped = rng.permutation(n) < round(rho * n)
    x[flipped] = -x[flipped]
    return x, flipped


@pytest.mark.parametrize("rho", [0.0, 0.15, 0.3])
def test_interval_covers_the_planted_share(rho: float) -> None:
    covered = 0
    for seed in range(10):
        x, flipped = _mixture(400, rho, seed)
        estimate = estimate_flip_share(x)
        assert estimate is not None and 0.0 <= estimate.low <= estimate.share <= estimate.high <= 0.5
        covered += estimate.low <= flipped.mean() <= estimate.high
    assert covered >= 8  # a 95% interval: 9.5 of 10 expected


def test_clean_data_reach_zero_and_a_separated_share_is_counted() -> None:
    x, _ = _mixture(400, 0.0, 0, mean=3.0)
    clean = estimate_flip_share(x)
    assert clean is not None and clean.clean and clean.share < 0.01 and clean.high < 0.03
    # Correctly labelled pairs never have a negative margin (any size from 0.1 to 10): every negative margin is a
    # flip, so the share is the negative share. (Magnitudes must vary: at one magnitude a flip rate and an error
    # rate are the same thing.)
    y = np.linspace(0.1, 10.0, 500)
    y[::10] *= -1.0  # 50 of 500 flipped, spread over every magnitude
    separated = estimate_flip_share(y)
    assert separated is not None and separated.share == pytest.approx(0.10, abs=0.02)
    assert separated.low > 0.05 and separated.high < 0.15 and not separated.clean
    posterior = np.asarray(separated.posterior)
    assert posterior[y < -2].min() > 0.99 and posterior[y > 2].max() < 0.01


def test_scores_that_decide_nothing_give_a_wide_interval() -> None:
    """A policy that has not learned: margins symmetric about 0 whatever the label. Nothing is known about rho."""
    x = np.random.default_rng(0).normal(size=300)
    estimate = estimate_flip_share(x)
    assert estimate is not None and estimate.low == 0.0 and estimate.high >= 0.45


def test_profile_likelihood_interval_matches_its_definition() -> None:
    """The reported interval is where 2 * (max log-likelihood - profile) <= chi2(1) at 95%: recompute the profile
    of the one-score model by brute force (a grid over its single weight) at the interval's ends."""
    x, _ = _mixture(200, 0.2, 3)
    estimate = estimate_flip_share(x)
    assert estimate is not None
    z = x / np.sqrt(np.mean(x**2))

    def profile(rho: float) -> float:
        best = -math.inf
        for w in np.linspace(0.0, 12.0, 2401):
            c = 1.0 / (1.0 + np.exp(-w * z))
            best = max(best, float(np.sum(np.log((1 - rho) * c + rho * (1 - c)))))
        return best

    top = profile(estimate.share)
    assert 2 * (top - profile(estimate.low)) <= CHI2_1_95 + 0.05
    assert 2 * (top - profile(estimate.high)) <= CHI2_1_95 + 0.05
    if estimate.low > 0:
        assert 2 * (top - profile(max(estimate.low - 0.02, 0.0))) > CHI2_1_95 - 0.05
    assert 2 * (top - profile(min(estimate.high + 0.02, 0.5))) > CHI2_1_95 - 0.05


def test_flip_design_and_too_few_pairs() -> None:
    design = flip_design([1.0, -2.0, 3.0], [0.5, None, 1.0], [0.0, 0.5, 1.0])
    assert design.shape == (3, 4)  # m, u*m, h, u*h
    assert np.isnan(design[1]).all()  # no reference margin: the pair has no h
    assert np.allclose(np.sqrt(np.nanmean(design[[0, 2]] ** 2, axis=0)), [1.0, 1.0, 1.0, 1.0], atol=0.5)
    flipped = flip_design([-1.0, 2.0, -3.0], [-0.5, None, -1.0], [0.0, 0.5, 1.0])
    assert np.allclose(flipped[[0, 2]], -design[[0, 2]])  # a flip negates every feature: the mirror
    assert estimate_flip_share([1.0] * 19) is None
    assert estimate_flip_share([0.0] * 30) is None  # zero margins carry no orientation


def test_pair_scores_keep_the_first_visit_and_survive_a_checkpoint() -> None:
    book = PairScores()
    book.record([3, 1], [0.5, -1.0], [0.25, -0.5], step=1, max_steps=4)
    book.record([1, 2], [9.0, 2.0], None, step=3, max_steps=4)  # row 1 again: a later epoch, ignored
    scores = {s.row: s for s in book.scores()}
    assert sorted(scores) == [1, 2, 3]
    assert scores[1].policy_margin == -1.0 and scores[1].step == 1 and scores[1].progress == 0.25
    assert scores[3].implicit_margin(0.1) == pytest.approx(0.025)
    assert scores[2].reference_margin is None and scores[2].implicit_margin(0.1) is None
    restored = PairScores()
    restored.load(book.state())
    assert restored.scores() == book.scores()
    with pytest.raises(ValueError, match="2 rows, 1 policy margins"):
        book.record([5, 6], [1.0], None, step=4, max_steps=4)


def test_repeated_and_truncated_to_identical_pairs() -> None:
    pairs = [
        ([1, 2], [3, 4], [3, 5]),  # 0
        ([1, 2], [3, 4], [3, 5]),  # 1: a repeat of 0
        ([7], [8, 9, 1], [8, 9, 1, 2]),  # 2: identical once cut to 4 tokens with keep_start
        ([5], [1, 9], [2, 9]),  # 3: identical once cut to its last token with keep_end
    ]
    assert duplicate_rows(pairs, max_length=4) == ({0, 1}, {2})
    assert duplicate_rows(pairs, max_length=None) == ({0, 1}, set())
    assert duplicate_rows(pairs, max_length=1, truncation_mode="keep_end") == ({0, 1}, {3})


def test_the_list_follows_the_verdict() -> None:
    """Flipped: the pairs more likely flipped than not; undetermined: the negative policy margins, most negative
    first; clean: none."""
    from trl_conservative.report.suspected_flips import listed_positions

    y = np.linspace(0.1, 10.0, 200)
    y[::10] *= -1.0
    flipped = estimate_flip_share(y)
    assert flipped is not None
    listed = listed_positions(flipped, list(y), top=50)
    assert sorted(listed) == [i for i in range(200) if y[i] < -1.0] or set(listed) <= set(range(0, 200, 10))
    assert len(listed) >= 15
    noise = np.random.default_rng(0).normal(size=200)
    undetermined = estimate_flip_share(noise)
    assert undetermined is not None and undetermined.low == 0.0 and undetermined.high > 0.05
    listed = listed_positions(undetermined, list(noise), top=5)
    assert listed == sorted(range(200), key=lambda i: noise[i])[:5]
    clean, _ = _mixture(400, 0.0, 0, mean=3.0)
    clean_estimate = estimate_flip_share(clean)
    assert listed_positions(clean_estimate, list(clean), top=20) == []


def _fixture_runs() -> dict[str, dict[str, list[float]]]:
    """Recorded training-time scores of benchmark runs (tests/flip_scores_fixture.json says which)."""
    import json
    from pathlib import Path

    return json.loads((Path(__file__).with_name("flip_scores_fixture.json")).read_text())["runs"]


@pytest.mark.parametrize("run", ["real share=0.0 seed=0", "real share=0.0 seed=1"])
def test_a_pretrained_models_confident_errors_are_not_reported_as_flips(run: str) -> None:
    """SmolLM2-135M-Instruct, clean chat pairs, one short epoch: the fit to both training-time scores excludes 0
    (it counts the policy's confident errors on correctly labelled pairs as flips); the fit to the reference's
    margins alone does not, so the run's estimate starts at 0 and the report reads "undetermined", never "flipped"."""
    from trl_conservative.flips.estimate import estimate_label_noise
    from trl_conservative.report.suspected_flips import LabelNoise

    scores = _fixture_runs()[run]
    assert not any(scores["flipped"])
    joint = estimate_flip_share(flip_design(scores["policy"], scores["reference"], scores["progress"]))
    assert joint is not None and joint.low > 0.03  # the unchecked fit: "flipped" on clean data
    reported = estimate_label_noise(scores["policy"], scores["reference"], scores["progress"])
    assert reported is not None and reported.low == 0.0
    assert (reported.share, reported.high, reported.posterior) == (joint.share, joint.high, joint.posterior)
    noise = LabelNoise(share=reported.share, low=reported.low, high=reported.high, scored=reported.n, pairs=128)
    assert noise.verdict == "undetermined"


def test_a_reference_that_separates_the_pairs_keeps_the_interval() -> None:
    """The embedded default, 15% planted (96 of 640 pairs): the reference's margins alone see the flips too, so the
    reported interval is the fit to both scores, and it covers the planted share away from 0."""
    from trl_conservative.flips.estimate import estimate_label_noise

    scores = _fixture_runs()["toy share=0.15 seed=0"]
    planted = sum(scores["flipped"]) / len(scores["flipped"])
    assert planted == pytest.approx(0.15, abs=0.001)
    reported = estimate_label_noise(scores["policy"], scores["reference"], scores["progress"])
    joint = estimate_flip_share(flip_design(scores["policy"], scores["reference"], scores["progress"]))
    assert reported == joint
    assert reported is not None and 0.1 < reported.low <= planted <= reported.high < 0.2


def test_confident_errors_under_heavy_noise_do_not_push_the_interval_past_the_planted_share() -> None:
    """SmolLM2-135M-Instruct, 710 chat pairs with 30% planted flips, one epoch: the fit to both training-time scores
    puts its whole interval above 30% (the policy, trained on flipped neighbours, also disagrees confidently with
    correctly labelled pairs), and so does the fit to the reference's margins alone; the fit to the policy's margin
    alone does not, so the reported interval starts at its lower end, covers the planted share and still excludes 0."""
    from trl_conservative.flips.estimate import estimate_label_noise

    scores = _fixture_runs()["real710 share=0.3 seed=0"]
    planted = sum(scores["flipped"]) / len(scores["flipped"])
    assert planted == pytest.approx(0.3, abs=0.001)
    joint = estimate_flip_share(flip_design(scores["policy"], scores["reference"], scores["progress"]))
    policy = estimate_flip_share(flip_design(scores["policy"], None, scores["progress"]))
    reference = estimate_flip_share(flip_design(scores["reference"]))
    assert joint is not None and policy is not None and reference is not None
    assert joint.low > planted and reference.low > planted  # each alone misses the planted share
    reported = estimate_label_noise(scores["policy"], scores["reference"], scores["progress"])
    assert reported is not None
    assert reported.low == policy.low and 0.0 < reported.low <= planted <= reported.high
    assert (reported.share, reported.high, reported.posterior) == (joint.share, joint.high, joint.posterior)


def test_without_reference_margins_the_estimate_is_the_policy_fit() -> None:
    from trl_conservative.flips.estimate import estimate_label_noise

    x, _ = _mixture(200, 0.2, 1)
    progress = list(np.linspace(0.0, 1.0, 200))
    assert estimate_label_noise(list(x), None, progress) == estimate_flip_share(flip_design(list(x), None, progress))
