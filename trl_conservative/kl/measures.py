"""KL between the policy and the reference: pure tensor functions, no TRL, no Trainer.

Two KLs, both >= 0 by construction and exactly 0 while the policy is the reference:

    token KL at a context c:  KL(pi(.|c) || pi_ref(.|c)) = sum_v pi(v|c) [log pi(v|c) - log pi_ref(v|c)]
        `exact_token_kl_chunked`, at the contexts of the dataset's chosen and rejected completions (training and
        evaluation batches): E_{c ~ data}[KL(pi(.|c) || pi_ref(.|c))], in nats per token.
    sequence KL at a prompt x: KL(pi(.|x) || pi_ref(.|x)) = E_{y ~ pi(.|x)} [ sum_t KL(pi(.|x, y_<t) || pi_ref(.|x, y_<t)) ]
        `sampled_sequence_kl`, the KL in the DPO objective, estimated on completions sampled from the policy
        itself (the Rao-Blackwellised chain-rule form: low variance and >= 0 per sample), in nats per sequence.

Per-token log-ratios l_t = log pi(y_t|c) - log pi_ref(y_t|c) on *dataset* tokens are not KL estimates (the tokens
are not drawn from pi: E_data[l_t] can be negative, and Schulman's k3 = exp(-l) - 1 + l explodes as DPO pushes
rejected tokens down); they are logged as drift signals under `logratio/...` (`logratio_sums`).

The batch functions return per-row *sums* (and the trainer counts tokens), never means: sums and counts gather
across processes exactly, so a 2-process run logs what one process logs on the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trl_conservative.metric_names import (
    KL_EXACT,
    KL_EXACT_CHOSEN,
    KL_EXACT_REJECTED,
    LOGRATIO_CHOSEN,
    LOGRATIO_CHOSEN_PER_TOKEN,
    LOGRATIO_REJECTED,
    LOGRATIO_REJECTED_PER_TOKEN,
)

__all__ = [
    "KLSums",
    "LogitTransform",
    "exact_token_kl_chunked",
    "kl_metrics",
    "logit_transform_for",
    "logratio_sums",
    "project_float32",
    "token_kl_from_logits",
]


def logratio_sums(
    policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """sum_t l_t per row over the tokens where `mask` is set (all `[R, T]`, aligned per token): `[R]` float32.

    Over a completion this is the sequence log-ratio r(y) = s(y) - s_ref(y). Masked-out positions contribute
    nothing, whatever they hold (even inf). Computed in float32, without gradient.
    """
    if policy_token_logps.shape != ref_token_logps.shape or policy_token_logps.shape != mask.shape:
        raise ValueError(
            f"policy_token_logps {tuple(policy_token_logps.shape)}, ref_token_logps "
            f"{tuple(ref_token_logps.shape)} and mask {tuple(mask.shape)} must be one [rows, tokens] shape."
        )
    with torch.no_grad():
        logratio = torch.where(mask.bool(), policy_token_logps.float() - ref_token_logps.float(), 0.0)
        return logratio.sum(dim=1)


@dataclass(frozen=True)
class LogitTransform:
    """Logit post-processing before the softmax: z * scale, then c * tanh(z / c) with c = softcap."""

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits.mul_(self.scale)
        if self.softcap is not None:
            logits = logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits


# Config attributes some architectures use to rescale logits in ways we do not reproduce.
_UNSUPPORTED_LOGIT_OPTIONS = ("output_multiplier", "lm_head_multiplier", "logits_scaling")


def logit_transform_for(config: Any) -> LogitTransform:
    """The logit transform a model config declares (`logit_scale`, `final_logit_softcapping`).

    Raises `ValueError` naming the option for configs that rescale logits another way, rather than
    computing a KL of the wrong distributions.
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _UNSUPPORTED_LOGIT_OPTIONS:
        value = getattr(text_config, name, None)
        if value is not None and value != 1:
            raise ValueError(
                f"the model config sets {name}={value!r}, a logit rescaling the exact KL does not reproduce"
            )
    scale = getattr(text_config, "logit_scale", None)
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return LogitTransform(
        scale=1.0 if scale is None else float(scale), softcap=None if not softcap else float(softcap)
    )


_IDENTITY = LogitTransform()


def exact_token_kl_chunked(
    policy_hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    mask: torch.Tensor,
    *,
    policy_weight: torch.Tensor,
    ref_weight: torch.Tensor,
    policy_bias: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    chunk_size: int = 256,
    policy_transform: LogitTransform = _IDENTITY,
    ref_transform: LogitTransform = _IDENTITY,
) -> torch.Tensor:
    """Exact token KL(pi || pi_ref) at every masked position, summed per row: `[R]` float32.

    `policy_hidden`, `ref_hidden` are `[R, T, H]` final hidden states (the LM head's input) and `mask` is
    `[R, T]`: position t is scored when the token *after* it is a completion token. The logits are
    `transform(hidden @ W.T + b)`, projected, softmaxed and compared in float32 whatever the model's dtype: a
    bf16 projection rounds every logit to 3 significant digits, a noise floor of about 1e-3 nats per token.

    Only `chunk_size` positions are projected at a time, so the extra memory is about
    3 x chunk_size x V x 4 bytes (two logit blocks plus logsumexp's temporary), never R x T x V; a bf16/fp16
    head is cast to float32 a vocabulary tile at a time (`project_float32`), never whole.
    Per token, rounding can leave a value like -1e-9 where the KL is 0; such values are clamped to 0, so
    the result is never negative.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}.")
    if policy_hidden.shape != ref_hidden.shape or policy_hidden.shape[:2] != mask.shape:
        raise ValueError(
            f"policy_hidden {tuple(policy_hidden.shape)} and ref_hidden {tuple(ref_hidden.shape)} must be "
            f"[rows, tokens, hidden] with mask {tuple(mask.shape)} as [rows, tokens]."
        )
    if policy_weight.shape[0] != ref_weight.shape[0]:
        raise ValueError(
            f"policy and reference vocabularies differ ({policy_weight.shape[0]} vs {ref_weight.shape[0]}); "
            "the token KL needs one shared vocabulary."
        )
    with torch.no_grad():
        rows, cols = mask.bool().nonzero(as_tuple=True)
        totals = torch.zeros(mask.size(0), dtype=torch.float32, device=policy_hidden.device)
        for start in range(0, rows.numel(), chunk_size):
            r, c = rows[start : start + chunk_size], cols[start : start + chunk_size]
            z_p = _logits(policy_hidden[r, c], policy_weight, policy_bias, policy_transform)
            z_q = _logits(ref_hidden[r, c], ref_weight, ref_bias, ref_transform).to(z_p.device)
            totals.index_add_(0, r.to(totals.device), token_kl_from_logits(z_p, z_q).to(totals.device))
        return totals


# Vocabulary rows cast to float32 at a time by `project_float32`: 256 MiB at hidden size 4096.
VOCAB_TILE = 16_384


def project_float32(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`hidden @ weight.T + bias` in float32, `[..., V]`, for a head of any dtype.

    A bf16/fp16 head is cast a tile of `VOCAB_TILE` rows at a time, so no float32 copy of the whole head
    (V x H x 4 bytes, 2 GiB at Llama-3's 128,256 x 4,096) is ever held; a float32 head is used as it is.
    """
    hidden = hidden.to(device=weight.device, dtype=torch.float32)
    if weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
        return F.linear(hidden, weight, bias)
    return torch.cat(
        [
            F.linear(
                hidden,
                weight[start : start + VOCAB_TILE].float(),
                None if bias is None else bias[start : start + VOCAB_TILE].float(),
            )
            for start in range(0, weight.size(0), VOCAB_TILE)
        ],
        dim=-1,
    )


def _logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transform: LogitTransform
) -> torch.Tensor:
    return transform(project_float32(hidden, weight, bias))


def token_kl_from_logits(z_p: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) per row of two `[n, V]` float32 logit blocks, overwriting both.

    The one token-KL formula: `kl/exact` (on dataset tokens) and the sampled sequence KL (`kl/sequence`) use it.
    Rounding can make an exactly-zero KL slightly negative; it is clamped at 0.

    Equivalent to `F.kl_div(input=log_q, target=log_p, log_target=True).sum(-1)` (note the argument order:
    kl_div(input, target) is KL(target || input)), without allocating two more `[n, V]` tensors.
    """
    log_p = z_p.sub_(torch.logsumexp(z_p, dim=-1, keepdim=True))
    diff = z_q.sub_(torch.logsumexp(z_q, dim=-1, keepdim=True)).neg_().add_(log_p)  # log p - log q
    p = log_p.exp_()
    per_token = torch.bmm(p.unsqueeze(1), diff.unsqueeze(2)).view(-1)
    return per_token.clamp_(min=0.0)


@dataclass(frozen=True)
class KLSums:
    """Per-row sums for one batch of `[chosen rows..., rejected rows...]` (TRL's layout), each `[2B]`.

    `tokens`: completion tokens per row; `logratio`: sum_t l_t (the sequence log-ratio r(y)); `exact`: the exact
    token KL summed over the row's completion contexts. A measure not computed on this batch is None.
    """

    tokens: torch.Tensor
    logratio: torch.Tensor | None = None
    exact: torch.Tensor | None = None

    def pair_table(self) -> tuple[tuple[str, ...], torch.Tensor]:
        """Column names and a `[B, C]` float32 table, one row per pair, to gather across processes.

        One row per pair (not per process) lets `gather_for_metrics` drop the samples accelerate repeats to
        even out the last evaluation batch.
        """
        names: list[str] = []
        columns: list[torch.Tensor] = []
        for name in ("tokens", "logratio", "exact"):
            rows = getattr(self, name)
            if rows is None:
                continue
            chosen, rejected = rows.detach().float().chunk(2, dim=0)
            names += [f"{name}/chosen", f"{name}/rejected"]
            columns += [chosen, rejected]
        return tuple(names), torch.stack(columns, dim=1)


def kl_metrics(names: tuple[str, ...], table: torch.Tensor) -> dict[str, float]:
    """The `kl/...` and `logratio/...` metrics from a (gathered) `[N, C]` pair table.

    `kl/exact_chosen|rejected`: exact token KL summed over that side's completion contexts / its token count;
    `kl/exact`: both sides pooled, token-weighted. `logratio/chosen|rejected`: mean over pairs of r(y);
    `logratio/*_per_token`: sum of l_t / token count. A ratio without tokens (or pairs) is not reported.
    """
    totals = dict(zip(names, table.double().sum(dim=0).tolist(), strict=True))
    n_pairs = table.size(0)
    tokens = {side: totals[f"tokens/{side}"] for side in ("chosen", "rejected")}
    metrics: dict[str, float] = {}
    if "exact/chosen" in totals:
        if tokens["chosen"] + tokens["rejected"] > 0:
            metrics[KL_EXACT] = (totals["exact/chosen"] + totals["exact/rejected"]) / (
                tokens["chosen"] + tokens["rejected"]
            )
        for side, metric in (("chosen", KL_EXACT_CHOSEN), ("rejected", KL_EXACT_REJECTED)):
            if tokens[side] > 0:
                metrics[metric] = totals[f"exact/{side}"] / tokens[side]
    if "logratio/chosen" in totals:
        per_sequence = (("chosen", LOGRATIO_CHOSEN), ("rejected", LOGRATIO_REJECTED))
        per_token = (("chosen", LOGRATIO_CHOSEN_PER_TOKEN), ("rejected", LOGRATIO_REJECTED_PER_TOKEN))
        for side, metric in per_sequence:
            if n_pairs > 0:
                metrics[metric] = totals[f"logratio/{side}"] / n_pairs
        for side, metric in per_token:
            if tokens[side] > 0:
                metrics[metric] = totals[f"logratio/{side}"] / tokens[side]
    return metrics
