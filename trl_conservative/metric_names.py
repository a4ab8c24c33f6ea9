"""Metric names: every logged key the package reads or writes, as constants (no literal elsewhere).

TRL's DPOTrainer logs the loss and the `rewards/*`, `logps/*`, `logits/*` metrics; `ConservativeDPOTrainer` adds the
KL monitoring keys below. `log()` adds the `eval_` prefix during evaluation. Everything under `kl/` is a true KL (>= 0, and exactly 0 while
the policy is the reference); log-ratio statistics on dataset tokens are drift signals, named `logratio/...`;
statistics of the sampled sequence KL that are not KLs themselves live under `sampled/...`.
"""

from __future__ import annotations

__all__ = [
    "EVAL_LOSS",
    "EXACT_METRICS",
    "LOSS",
    "REWARDS_ACCURACIES",
    "REWARDS_CHOSEN",
    "REWARDS_MARGINS",
    "REWARDS_REJECTED",
    "TRL_METRICS",
    "KL_EXACT",
    "KL_EXACT_CHOSEN",
    "KL_EXACT_REJECTED",
    "KL_SEQUENCE",
    "LOGRATIO_CHOSEN",
    "LOGRATIO_CHOSEN_PER_TOKEN",
    "LOGRATIO_METRICS",
    "LOGRATIO_REJECTED",
    "LOGRATIO_REJECTED_PER_TOKEN",
    "SAMPLED_KL_STDERR",
    "SAMPLED_LENGTH",
    "SAMPLED_METRICS",
    "SAMPLED_TRUNCATED",
    "logged_metric_names",
]

# --- TRL's own (trl/trainer/dpo_trainer.py, TRL 1.16) ------------------------------------------------------------
LOSS = "loss"  # a training-step log has it; evaluation logs have EVAL_LOSS, the end-of-training one `train_loss`
EVAL_LOSS = f"eval_{LOSS}"
REWARDS_CHOSEN = "rewards/chosen"  # beta * r(y_w): the implicit reward of the chosen completion
REWARDS_REJECTED = "rewards/rejected"
REWARDS_ACCURACIES = "rewards/accuracies"  # share of pairs whose chosen reward is higher
REWARDS_MARGINS = "rewards/margins"
TRL_METRICS = (
    LOSS,
    REWARDS_CHOSEN,
    REWARDS_REJECTED,
    REWARDS_ACCURACIES,
    REWARDS_MARGINS,
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "entropy",
    "mean_token_accuracy",
)

# --- KL monitoring ---------------------------------------------------------------------------------------------
KL_EXACT = "kl/exact"  # exact token KL at dataset contexts, chosen and rejected pooled (token-weighted)
KL_EXACT_CHOSEN = "kl/exact_chosen"  # ... at the chosen completions' contexts only
KL_EXACT_REJECTED = "kl/exact_rejected"  # ... at the rejected completions' contexts only
KL_SEQUENCE = (
    "kl/sequence"  # evaluation only: KL(pi(.|x) || pi_ref(.|x)) over sampled sequences, nats/sequence
)
SAMPLED_KL_STDERR = "sampled/kl_stderr"  # its standard error over prompts
SAMPLED_TRUNCATED = "sampled/truncated"  # share of samples that hit max_new_tokens
SAMPLED_LENGTH = "sampled/length"  # mean sampled completion length, tokens
LOGRATIO_CHOSEN = "logratio/chosen"  # mean over pairs of r(y_w) = s(y_w) - s_ref(y_w), nats per sequence
LOGRATIO_REJECTED = "logratio/rejected"
LOGRATIO_CHOSEN_PER_TOKEN = "logratio/chosen_per_token"  # token-weighted mean of l_t over chosen tokens
LOGRATIO_REJECTED_PER_TOKEN = "logratio/rejected_per_token"
EXACT_METRICS = (KL_EXACT, KL_EXACT_CHOSEN, KL_EXACT_REJECTED)
LOGRATIO_METRICS = (
    LOGRATIO_CHOSEN,
    LOGRATIO_REJECTED,
    LOGRATIO_CHOSEN_PER_TOKEN,
    LOGRATIO_REJECTED_PER_TOKEN,
)
SAMPLED_METRICS = (KL_SEQUENCE, SAMPLED_KL_STDERR, SAMPLED_TRUNCATED, SAMPLED_LENGTH)


def logged_metric_names(*, exact: bool, logratio: bool, sequence: bool, evaluates: bool) -> frozenset[str]:
    """The KL and log-ratio metric keys a run logs, as `on_log` sees them (`eval_` prefixed for evaluation).

    `exact`: `kl_exact_steps > 0`; `logratio`: `kl_drift`; `sequence`: sampled sequence KL on
    (`kl_sequence_prompts > 0`); `evaluates`: the run evaluates (an eval split and an eval strategy).
    """
    train = (EXACT_METRICS if exact else ()) + (LOGRATIO_METRICS if logratio else ())
    names = set(train)
    if evaluates:
        names |= {f"eval_{n}" for n in train + (SAMPLED_METRICS if sequence else ())}
    return frozenset(names)
