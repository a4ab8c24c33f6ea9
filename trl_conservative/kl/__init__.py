"""KL between the policy and the reference: the measures, the sampled sequence KL, the settings and the monitor.

names        every logged metric key (`kl/exact`, `kl/sequence`, `logratio/...`), as constants
measures     the token KL at dataset contexts and the log-ratio drift signals: pure tensor functions
sampling     the sequence KL on the policy's own samples (`sampled_sequence_kl`)
settings     `KLSettings`, read from a config
sharded_head the LM head gathered whole under ZeRO-3 / FSDP for the token KL
monitor      `KLMonitorCallback` (imported from `trl_conservative` or `trl_conservative.kl.monitor`)
"""

from __future__ import annotations

from trl_conservative.metric_names import (
    EXACT_METRICS,
    KL_EXACT,
    KL_EXACT_CHOSEN,
    KL_EXACT_REJECTED,
    KL_SEQUENCE,
    LOGRATIO_CHOSEN,
    LOGRATIO_CHOSEN_PER_TOKEN,
    LOGRATIO_METRICS,
    LOGRATIO_REJECTED,
    LOGRATIO_REJECTED_PER_TOKEN,
    SAMPLED_KL_STDERR,
    SAMPLED_LENGTH,
    SAMPLED_METRICS,
    SAMPLED_TRUNCATED,
    logged_metric_names,
)

from .measures import (
    KLSums,
    LogitTransform,
    exact_token_kl_chunked,
    kl_metrics,
    logit_transform_for,
    logratio_sums,
    project_float32,
)
from .sampling import SequenceKL, sampled_sequence_kl

__all__ = [
    "EXACT_METRICS",
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
    "KLSums",
    "LogitTransform",
    "SequenceKL",
    "exact_token_kl_chunked",
    "kl_metrics",
    "logged_metric_names",
    "logit_transform_for",
    "logratio_sums",
    "project_float32",
    "sampled_sequence_kl",
]
