"""The on-policy sequence KL(pi(.|x) || pi_ref(.|x)): the KL in the DPO objective, on the policy's own samples.

For a prompt x and a completion y ~ pi(.|x) with prefixes c_t = (x, y_<t), the chain rule gives

    KL_seq(x) = E_{y ~ pi(.|x)} [ sum_t KL(pi(.|c_t) || pi_ref(.|c_t)) ]

(the Rao-Blackwellised form of E[sum_t log pi(y_t|c_t) - log pi_ref(y_t|c_t)]: the same expectation, but every
sample's value is >= 0 and its variance is much lower). `sampled_sequence_kl` samples y from the policy at
temperature 1 with no top-k/top-p (its own sampling loop: a model's generation config is never read, since any
other sampler estimates the KL of another distribution), runs the reference in lockstep on the same prefixes and
adds the exact next-token KL at every sampled prefix. A completion ends at an end-of-sequence token or after
`max_new_tokens` tokens (then the estimate is the KL of the truncated process; the share is reported).

Logits are computed in float32 from the backbones' final hidden states and the LM heads, as for the token KL
(`trl_conservative.kl`), falling back to the model's own logits where the head cannot be reproduced. Sampling is
seeded per (prompt, sample), so the result does not depend on batching or on how prompts are split over
processes.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .measures import logit_transform_for, project_float32, token_kl_from_logits

__all__ = [
    "SequenceKL",
    "backbone_of",
    "causal_lm_of",
    "sampled_sequence_kl",
    "sequence_kl_rows",
    "summarize_rows",
]


@dataclass(frozen=True)
class SequenceKL:
    """The sampled sequence KL over a set of prompts.

    Attributes:
        mean: estimated KL(pi || pi_ref) per sequence, in nats, averaged over the prompts (>= 0).
        stderr: its standard error (NaN from a single sample). With several samples per prompt it is the
            sampling error for this fixed set of prompts; with one, the spread over prompts.
        per_prompt: the mean over each prompt's samples, in prompt order.
        truncated: share of samples that reached `max_new_tokens` without an end-of-sequence token.
        mean_length: mean number of sampled tokens per completion (the end-of-sequence token included).
        samples: number of sampled completions.
    """

    mean: float
    stderr: float
    per_prompt: tuple[float, ...]
    truncated: float
    mean_length: float
    samples: int


def causal_lm_of(model: Any) -> Any:
    """The transformers causal LM inside `model`: unwraps DDP/DeepSpeed (`.module`) and PEFT (`get_base_model`)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone_of(causal_lm: Any) -> Any:
    """The module a causal LM calls for its hidden states (`base_model_prefix`, e.g. `model`), else itself."""
    return getattr(causal_lm, getattr(causal_lm, "base_model_prefix", ""), causal_lm)


def sampled_sequence_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    samples_per_prompt: int = 1,
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    batch_size: int = 8,
) -> SequenceKL:
    """Estimate KL(pi(.|x) || pi_ref(.|x)) per sequence over `prompts`, sampling from `policy`.

    Args:
        policy: a causal LM (transformers, optionally PEFT-wrapped).
        reference: the reference causal LM; `None` with a PEFT `policy` means the policy with its adapter
            disabled.
        prompts: token-id lists, one per prompt (no padding).
        max_new_tokens: length limit of a sampled completion.
        samples_per_prompt: completions sampled per prompt.
        seed: sampling seed; completion j of prompt i depends only on (seed, i, j).
        eos_token_id: token id(s) that end a completion; default the policy's `generation_config` or `config`.
        pad_token_id: id fed after a completion ended (its value never matters); default eos or 0.
        batch_size: completions sampled together.

    Returns:
        A `SequenceKL` with `mean` and `stderr` in nats per sequence.
    """
    rows = sequence_kl_rows(
        policy,
        reference,
        prompts,
        range(len(prompts)) if hasattr(prompts, "__len__") else range(0),  # anything else: refused there
        max_new_tokens=max_new_tokens,
        samples_per_prompt=samples_per_prompt,
        seed=seed,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        batch_size=batch_size,
    )
    return summarize_rows(rows)


def _check_args(
    policy: Any,
    reference: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    samples: int,
    batch: int,
) -> None:
    """Refuse what would give NaN or a raw torch error later, before anything is sampled (one `ValueError` each,
    naming the argument, the bad value and the fix)."""
    for name, value, low in (
        ("max_new_tokens", max_new_tokens, 1),
        ("samples_per_prompt", samples, 1),
        ("batch_size", batch, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if reference is None and not hasattr(policy, "disable_adapter"):
        raise ValueError(
            "reference=None means the PEFT policy with its adapter disabled, but the policy is not a PEFT model. "
            "Pass the reference model."
        )
    vocab = _vocabulary(policy, reference)
    context = _context(policy, reference)
    _check_prompts(prompts, vocab, context, max_new_tokens)


def _check_prompts(
    prompts: Any, vocab: tuple[int, str] | None, context: tuple[int, str, bool] | None, max_new_tokens: int
) -> None:
    fix = 'pass token-id lists, e.g. tokenizer(texts)["input_ids"]'
    if isinstance(prompts, (str, bytes)):
        raise ValueError(f"prompts is {_a(prompts)} ({_short(prompts)}), not token ids: {fix}.")
    if isinstance(prompts, torch.Tensor) and prompts.dim() != 2:
        raise ValueError(
            f"prompts is a {prompts.dim()}-D tensor of shape {tuple(prompts.shape)}; it must be a list of token-id "
            f"lists (or a 2-D tensor, one row per prompt): {fix}."
        )
    if not hasattr(prompts, "__len__") or not hasattr(prompts, "__getitem__"):
        raise ValueError(
            f"prompts must be a list of token-id lists, got {_a(prompts)} {_short(prompts)}: {fix}."
        )
    if len(prompts) == 0:
        raise ValueError(
            f"prompts is empty ({_short(prompts)}): the sequence KL is a mean over prompts, so it needs at least one; "
            f"{fix}."
        )
    for i in range(len(prompts)):
        ids = _token_ids(prompts[i], i, fix)
        if not ids:
            raise ValueError(
                f"prompt {i} is empty (prompts[{i}] = {_short(prompts[i])}): the sequence KL needs at least one "
                "prompt token. Drop it, or give it its tokens."
            )
        if vocab is not None:
            size, owner = vocab
            low, high = min(ids), max(ids)
            if low < 0 or high >= size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"prompt {i} holds token id {bad} (prompts[{i}][{ids.index(bad)}]), outside the {owner}'s "
                    f"vocabulary of {size} ids (0-{size - 1}): tokenize the prompts with the model's own tokenizer."
                )
        if context is not None:
            limit, owner, extrapolates = context
            if len(ids) > limit:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens, more than the {owner}'s context of {limit} positions "
                    f"(max_position_embeddings): shorten prompts[{i}] to at most {max(limit - max_new_tokens + 1, 1)} "
                    "tokens (the context holds the prompt and the sampled completion)."
                )
            # Positions fed: the prompt, then every sampled token but the last.
            reach = len(ids) + max_new_tokens - 1
            if reach > limit and not extrapolates:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens, so max_new_tokens={max_new_tokens} would feed the {owner} "
                    f"{reach} positions, more than its context of {limit} (max_position_embeddings): lower "
                    f"max_new_tokens to {max(limit - len(ids) + 1, 1)} or shorten prompts[{i}]."
                )


def _token_ids(prompt: Any, i: int, fix: str) -> list[int]:
    """`prompt` as a list of ints, or a `ValueError` saying which entry is not a token id."""
    if isinstance(prompt, (str, bytes)):
        raise ValueError(
            f"prompt {i} is {_a(prompt)} (prompts[{i}] = {_short(prompt)}), not token ids: {fix}."
        )
    if isinstance(prompt, torch.Tensor):
        if (
            prompt.dim() != 1
            or prompt.is_floating_point()
            or prompt.is_complex()
            or prompt.dtype == torch.bool
        ):
            raise ValueError(
                f"prompt {i} is a {prompt.dim()}-D {prompt.dtype} tensor; a prompt is a 1-D integer tensor or a "
                f"list of token ids: {fix}."
            )
        return [int(t) for t in prompt.tolist()]
    if not hasattr(prompt, "__len__") or not hasattr(prompt, "__iter__"):
        hint = f", and a single prompt is wrapped as [[{prompt!r}, ...]]" if isinstance(prompt, int) else ""
        raise ValueError(
            f"prompt {i} is {_a(prompt)} (prompts[{i}] = {_short(prompt)}), not a list of token ids: "
            f"prompts is a list of prompts{hint}; {fix}."
        )
    ids = []
    for position, token in enumerate(prompt):
        try:
            if isinstance(token, bool) or type(token).__name__ == "bool_":
                raise TypeError
            ids.append(operator.index(token))
        except TypeError:
            raise ValueError(
                f"prompt {i} holds {_short(token)} ({_a(token)}) at position {position} "
                f"(prompts[{i}][{position}]), not an integer token id: {fix}."
            ) from None
    return ids


def _vocabulary(policy: Any, reference: Any) -> tuple[int, str] | None:
    """The smaller of the policy's and reference's vocabulary sizes, and whose; refuses two different ones."""
    sizes = {name: _vocab_size(model) for name, model in (("policy", policy), ("reference", reference))}
    if reference is not None and None not in sizes.values() and sizes["policy"] != sizes["reference"]:
        raise ValueError(
            f"reference has a vocabulary of {sizes['reference']} tokens, the policy {sizes['policy']}: the KL "
            "compares their next-token distributions id by id, so pass a reference with the policy's vocabulary "
            "(the same tokenizer and embedding size; e.g. the policy's base model before training)."
        )
    known = [(size, name) for name, size in sizes.items() if size is not None]
    return min(known) if known else None


def _vocab_size(model: Any) -> int | None:
    """Ids the model can embed and score: the smaller of its input embedding rows and its LM head's outputs."""
    if model is None:
        return None
    lm = causal_lm_of(model)
    sizes = []
    # A model without the accessors (or one whose accessor raises NotImplementedError) is read from its config.
    with contextlib.suppress(Exception):
        sizes.append(int(lm.get_input_embeddings().num_embeddings))
    with contextlib.suppress(Exception):
        sizes.append(int(lm.get_output_embeddings().out_features))
    if not sizes:
        config = _text_config(lm)
        size = getattr(config, "vocab_size", None)
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            sizes.append(size)
    return min(sizes) if sizes else None


def _context(policy: Any, reference: Any) -> tuple[int, str, bool] | None:
    """(positions, whose, extrapolates): the smaller model context; `extrapolates` when it has rotary positions,
    which go past the context without an error (learned position embeddings raise an IndexError there)."""
    found = []
    for name, model in (("policy", policy), ("reference", reference)):
        if model is None:
            continue
        config = _text_config(causal_lm_of(model))
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                rotary = any(
                    getattr(config, k, None) is not None
                    for k in ("rope_parameters", "rope_theta", "rope_scaling")
                )
                found.append((value, name, rotary))
                break
    return min(found) if found else None


def _text_config(lm: Any) -> Any:
    config = getattr(lm, "config", None)
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        with contextlib.suppress(Exception):
            return getter()
    return config


def _a(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sequence_kl_rows(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    prompts: Sequence[Sequence[int]],
    indices: Sequence[int],
    *,
    max_new_tokens: int,
    samples_per_prompt: int = 1,
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    batch_size: int = 8,
    synced: bool = False,
    batches: int | None = None,
) -> torch.Tensor:
    """`[len(prompts), samples_per_prompt, 3]` float64: (KL sum, length, truncated) for the prompts in `indices`.

    Rows of prompts not in `indices` stay 0, so processes that each take some prompts can sum their tables.
    `synced=True` keeps every process in step (same number of forwards; needed when parameters are sharded,
    ZeRO-3/FSDP): `batches` is then the number of batches every process runs (padded with discarded rows).
    """
    _check_args(policy, reference, prompts, max_new_tokens, samples_per_prompt, batch_size)
    eos = _eos_ids(policy, eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    _check_pad(policy, reference, pad, "pad_token_id" if pad_token_id is not None else "eos_token_id")
    table = torch.zeros(len(prompts), samples_per_prompt, 3, dtype=torch.float64)
    work = [(i, j) for i in indices for j in range(samples_per_prompt)]
    n_batches = math.ceil(len(work) / batch_size) if batches is None else batches
    policy_head = _Head(policy)
    ref_head = policy_head if reference is None else _Head(reference)
    with _eval_mode(policy, reference), torch.no_grad():
        for b in range(n_batches):
            chunk = work[b * batch_size : (b + 1) * batch_size]
            real = len(chunk)
            if real == 0:  # synced padding: run a discarded row so every process calls forward alike
                chunk = [(0, 0)]
            kl, length, truncated = _sample_batch(
                policy,
                reference,
                policy_head,
                ref_head,
                [prompts[i] for i, _ in chunk],
                [_row_seed(seed, i, j) for i, j in chunk],
                max_new_tokens=max_new_tokens,
                eos=eos,
                pad=pad,
                synced=synced,
            )
            for k, (i, j) in enumerate(chunk[:real]):
                table[i, j] = torch.tensor([kl[k], length[k], truncated[k]], dtype=torch.float64)
    return table


def _check_pad(policy: Any, reference: Any, pad: Any, name: str) -> None:
    """The id fed after a completion ended must be one the models embed (it comes from `pad_token_id`, else the
    first end-of-sequence id)."""
    vocab = _vocabulary(policy, reference)
    if isinstance(pad, bool) or not isinstance(pad, int):
        raise ValueError(f"{name} must be an integer token id, got {pad!r}.")
    if vocab is not None and not 0 <= pad < vocab[0]:
        raise ValueError(
            f"{name} {pad} (fed after a completion ends) is outside the {vocab[1]}'s vocabulary of {vocab[0]} ids "
            f"(0-{vocab[0] - 1}): pass pad_token_id=<an id in that range>, e.g. the tokenizer's pad_token_id."
        )


def summarize_rows(table: torch.Tensor) -> SequenceKL:
    """`SequenceKL` from a full `[prompts, samples, 3]` table (see `sequence_kl_rows`)."""
    n, k = table.shape[0], table.shape[1]
    kl = table[..., 0]
    per_prompt = kl.mean(dim=1)
    mean = float(per_prompt.mean()) if n else math.nan
    if k >= 2:
        # Fixed prompts: Var(mean) = sum_i s_i^2 / k / n^2, s_i^2 the variance of prompt i's samples.
        stderr = float(kl.var(dim=1, unbiased=True).sum().div(k).sqrt().div(n))
    elif n >= 2:
        stderr = float(per_prompt.std(unbiased=True) / math.sqrt(n))
    else:
        stderr = math.nan
    return SequenceKL(
        mean=mean,
        stderr=stderr,
        per_prompt=tuple(float(v) for v in per_prompt),
        truncated=float(table[..., 2].mean()) if n else math.nan,
        mean_length=float(table[..., 1].mean()) if n else math.nan,
        samples=n * k,
    )


def _row_seed(seed: int, prompt: int, sample: int) -> int:
    return (seed * 1_000_003 + prompt * 7_919 + sample * 104_729 + 17) % (2**63 - 1)


def _eos_ids(policy: Any, eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        lm = causal_lm_of(policy)
        for source in (getattr(lm, "generation_config", None), getattr(lm, "config", None)):
            eos_token_id = getattr(source, "eos_token_id", None)
            if eos_token_id is not None:
                break
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(t) for t in eos_token_id]


@contextlib.contextmanager
def _eval_mode(*models: Any) -> Iterator[None]:
    """Dropout off while sampling; each model's training flag restored after."""
    was = [(m, m.training) for m in models if m is not None]
    for m, _ in was:
        m.eval()
    try:
        yield
    finally:
        for m, training in was:
            m.train(training)


class _Head:
    """The next-token logits of a causal LM in float32: the backbone's last hidden state through its LM head.

    Falls back to the model's own logits (cast to float32) when the head cannot be reproduced: no backbone under
    `base_model_prefix`, a logit rescaling we do not know, or a head whose weight is sharded out of reach.
    """

    def __init__(self, model: Any) -> None:
        self.lm = causal_lm_of(model)
        self.hidden: torch.Tensor | None = None
        self.head: torch.nn.Linear | None = None  # None: use the model's own logits
        backbone = backbone_of(self.lm)
        head = self.lm.get_output_embeddings() if hasattr(self.lm, "get_output_embeddings") else None
        try:
            self.transform = logit_transform_for(self.lm.config)
        except (ValueError, AttributeError):
            return
        if backbone is self.lm or not isinstance(head, torch.nn.Linear) or head.weight.numel() == 0:
            return
        if hasattr(head.weight, "full_tensor") or hasattr(head.weight, "ds_id"):
            return  # sharded (FSDP2 DTensor, ZeRO-3): the model's own forward gathers it, use its logits
        self.backbone, self.head = backbone, head

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        if self.head is None:
            yield
            return

        def hook(_module: Any, _args: Any, out: Any) -> None:
            hidden = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
            self.hidden = hidden[:, -1].detach()

        handle = self.backbone.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def logits(self, outputs: Any) -> torch.Tensor:
        if self.head is None or self.hidden is None:
            own: torch.Tensor = outputs.logits[:, -1].float()
            return own
        logits: torch.Tensor = self.transform(project_float32(self.hidden, self.head.weight, self.head.bias))
        return logits


def _forward(
    model: Any, head: _Head, adapter_off: bool, cache: Any = None, **kwargs: Any
) -> tuple[torch.Tensor, Any]:
    """Next-token float32 logits and the updated KV cache of one incremental forward."""
    off = model.disable_adapter() if adapter_off else contextlib.nullcontext()
    params = _forward_parameters(causal_lm_of(model))
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1  # the head runs on the last position only
    if cache is not None:  # transformers >= 5.2x names it `cache`, earlier releases `past_key_values`
        kwargs["cache" if "cache" in params else "past_key_values"] = cache
    with off, head.capture():
        outputs = model(**kwargs, use_cache=True)
    new_cache = getattr(outputs, "cache", None)
    return head.logits(outputs), new_cache if new_cache is not None else outputs.past_key_values


def _forward_parameters(lm: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(lm.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _sample_batch(
    policy: Any,
    reference: Any,
    policy_head: _Head,
    ref_head: _Head,
    prompts: list[Sequence[int]],
    seeds: list[int],
    *,
    max_new_tokens: int,
    eos: list[int],
    pad: int,
    synced: bool,
) -> tuple[list[float], list[float], list[float]]:
    device = next(p.device for p in causal_lm_of(policy).parameters())
    n, width = len(prompts), max(len(p) for p in prompts)
    # Left padding, positions counted from each prompt's first real token.
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for r, prompt in enumerate(prompts):
        input_ids[r, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        attention[r, width - len(prompt) :] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    ref_model, adapter_off = (policy, True) if reference is None else (reference, False)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)

    kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions}
    z_p, cache_p = _forward(policy, policy_head, False, **kw)
    z_q, cache_q = _forward(ref_model, ref_head, adapter_off, **kw)
    total = torch.zeros(n, dtype=torch.float64, device=device)
    length = torch.zeros(n, dtype=torch.float64, device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)
    next_position = positions[:, -1]
    for step in range(max_new_tokens):
        log_p = torch.log_softmax(z_p, dim=-1)  # before the KL overwrites z_p
        token_kl = token_kl_from_logits(z_p, z_q.to(z_p.device))
        total += torch.where(active, token_kl.double(), 0.0)
        length += active.double()
        token = _sample(log_p, generators)
        if eos_ids.numel():
            active &= ~torch.isin(token, eos_ids)
        if step == max_new_tokens - 1 or not _any(active, synced):
            break
        token = torch.where(active, token, pad)
        attention = torch.cat([attention, torch.ones((n, 1), dtype=attention.dtype, device=device)], dim=1)
        next_position = next_position + 1
        kw = {
            "input_ids": token[:, None],
            "attention_mask": attention,
            "position_ids": next_position[:, None],
        }
        z_p, cache_p = _forward(policy, policy_head, False, cache_p, **kw)
        z_q, cache_q = _forward(ref_model, ref_head, adapter_off, cache_q, **kw)
    truncated = active.double()  # still going after max_new_tokens tokens
    return total.tolist(), length.tolist(), truncated.tolist()


def _sample(log_p: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row from exp(log_p), by inverting the CDF at a uniform drawn from that row's generator."""
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(log_p.device)
    cdf = log_p.double().exp().cumsum(dim=-1)
    index = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).squeeze(1)
    return index.clamp(max=log_p.size(-1) - 1)


def _any(active: torch.Tensor, synced: bool) -> bool:
    """Whether any row (on any process, when `synced`) is still sampling."""
    flag = active.any().to(torch.int32)
    if synced and torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = flag.clone()
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())
