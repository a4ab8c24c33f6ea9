"""KL between the policy and the reference: pure tensor functions, no TRL, no Trainer.

Per token at a context c (a prefix of a dataset completion), with l_t = log pi(y_t|c) - log pi_ref(y_t|c):

    k1 = l_t                              (Schulman 2020, "Approximating KL Divergence"; can be negative)
    k3 = exp(-l_t) - 1 + l_t              (Schulman 2020; >= 0)
    exact = sum_v pi(v|c) [log pi(v|c) - log pi_ref(v|c)] = KL(pi(.|c) || pi_ref(.|c))   (>= 0)

In offline DPO the tokens y_t come from the dataset, not from pi, so k1/k3 are drift signals, not unbiased KL
estimates; the exact token KL at dataset contexts is a well-defined quantity, E_{c ~ data}[KL(pi || pi_ref)].

Every function returns per-row *sums* (and the trainer counts tokens), never means: sums and counts gather
across processes exactly, so a 2-process run logs what one process logs on the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenDrift:
    """Per-row sums over the masked tokens, each `[R]` float32.

    Attributes:
        k1: sum_t l_t. Over a completion this is the sequence log-ratio r(y) = s(y) - s_ref(y).
        k3: sum_t exp(-l_t) - 1 + l_t.
        tokens: number of masked-in tokens.
    """

    k1: torch.Tensor
    k3: torch.Tensor
    tokens: torch.Tensor


def token_kl_drift(
    policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor, mask: torch.Tensor
) -> TokenDrift:
    """k1 and k3 summed per row over the tokens where `mask` is set (all `[R, T]`, aligned per token).

    Masked-out positions contribute nothing, whatever they hold. Computed in float32, without gradient.
    """
    if policy_token_logps.shape != ref_token_logps.shape or policy_token_logps.shape != mask.shape:
        raise ValueError(
            f"policy_token_logps {tuple(policy_token_logps.shape)}, ref_token_logps "
            f"{tuple(ref_token_logps.shape)} and mask {tuple(mask.shape)} must be one [rows, tokens] shape."
        )
    with torch.no_grad():
        keep = mask.bool()
        logratio = torch.where(keep, policy_token_logps.float() - ref_token_logps.float(), 0.0)
        # k3 = exp(-l) - 1 + l; expm1 keeps it accurate (exactly 0 at l = 0, hence at masked positions).
        k3 = torch.expm1(-logratio) + logratio
        return TokenDrift(k1=logratio.sum(dim=1), k3=k3.sum(dim=1), tokens=keep.sum(dim=1).float())


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
    `transform(hidden @ W.T + b)`; the projection runs in the weights' dtype (as TRL's fused head does), the
    softmax and the KL in float32.

    Only `chunk_size` positions are projected at a time, so the extra memory is about
    3 x chunk_size x V x 4 bytes (two logit blocks plus logsumexp's temporary), never R x T x V.
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
            totals.index_add_(0, r.to(totals.device), _kl_from_logits(z_p, z_q).to(totals.device))
        return totals


def _logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transform: LogitTransform
) -> torch.Tensor:
    hidden = hidden.to(device=weight.device, dtype=weight.dtype)
    logits = F.linear(hidden, weight, bias).float()
    return transform(logits)


def _kl_from_logits(z_p: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """sum_v p_v (log p_v - log q_v) per row of two `[n, V]` float32 logit blocks, overwriting both.

    Equivalent to `F.kl_div(input=log_q, target=log_p, log_target=True).sum(-1)` (note the argument order:
    kl_div(input, target) is KL(target || input)), without allocating two more `[n, V]` tensors.
    """
    log_p = z_p.sub_(torch.logsumexp(z_p, dim=-1, keepdim=True))
    diff = z_q.sub_(torch.logsumexp(z_q, dim=-1, keepdim=True)).neg_().add_(log_p)  # log p - log q
    p = log_p.exp_()
    per_token = torch.bmm(p.unsqueeze(1), diff.unsqueeze(2)).view(-1)
    return per_token.clamp_(min=0.0)


# Metric names. `log()` adds the `eval_` prefix during evaluation.
KL_EXACT, KL_K1, KL_K3 = "kl/exact", "kl/k1", "kl/k3"
KL_LOGRATIO_CHOSEN, KL_LOGRATIO_REJECTED = "kl/logratio_chosen", "kl/logratio_rejected"


@dataclass(frozen=True)
class KLSums:
    """Per-row sums for one batch of `[chosen rows..., rejected rows...]` (TRL's layout), each `[2B]`.

    `k1` alone is enough for `kl/k1` and the log-ratios (it is the sequence log-ratio), so it may be known
    where `k3` is not (precomputed reference sums); a measure not computed is None.
    """

    tokens: torch.Tensor
    k1: torch.Tensor | None = None
    k3: torch.Tensor | None = None
    exact: torch.Tensor | None = None

    def pair_table(self) -> tuple[tuple[str, ...], torch.Tensor]:
        """Column names and a `[B, C]` float32 table, one row per pair, to gather across processes.

        One row per pair (not per process) lets `gather_for_metrics` drop the samples accelerate repeats to
        even out the last evaluation batch.
        """
        names: list[str] = []
        columns: list[torch.Tensor] = []
        for name in ("tokens", "k1", "k3", "exact"):
            rows = getattr(self, name)
            if rows is None:
                continue
            chosen, rejected = rows.detach().float().chunk(2, dim=0)
            names += [f"{name}/chosen", f"{name}/rejected"]
            columns += [chosen, rejected]
        return tuple(names), torch.stack(columns, dim=1)


def kl_metrics(names: tuple[str, ...], table: torch.Tensor) -> dict[str, float]:
    """The `kl/...` metrics from a (gathered) `[N, C]` pair table: token-weighted means and per-pair means.

    `kl/k1`, `kl/k3`, `kl/exact`: sum over all completion tokens of chosen and rejected / token count.
    `kl/logratio_chosen|rejected`: mean over pairs of r(y) = sum_t l_t. Nothing is reported without tokens.
    """
    totals = dict(zip(names, table.double().sum(dim=0).tolist(), strict=True))
    n_pairs = table.size(0)
    tokens = totals["tokens/chosen"] + totals["tokens/rejected"]
    metrics: dict[str, float] = {}
    if tokens > 0:
        for measure, metric in (("k1", KL_K1), ("k3", KL_K3), ("exact", KL_EXACT)):
            if f"{measure}/chosen" in totals:
                metrics[metric] = (totals[f"{measure}/chosen"] + totals[f"{measure}/rejected"]) / tokens
    if n_pairs > 0 and "k1/chosen" in totals:
        metrics[KL_LOGRATIO_CHOSEN] = totals["k1/chosen"] / n_pairs
        metrics[KL_LOGRATIO_REJECTED] = totals["k1/rejected"] / n_pairs
    return metrics
