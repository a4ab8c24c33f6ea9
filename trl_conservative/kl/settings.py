"""`KLSettings`: the KL monitoring settings of a config (`kl_settings`), with their measured defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trl_conservative.errors import ConfigError

__all__ = [
    "KL_CHUNK_SIZE_DEFAULT",
    "KL_EXACT_STEPS_DEFAULT",
    "KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT",
    "KL_SEQUENCE_PROMPTS_DEFAULT",
    "KLSettings",
    "kl_settings",
]

# benchmarks/bench_kl.py (CPU, V = 32,000, hidden 256): `kl/exact` on every step costs +8.9% step time; with
# these defaults (every 10 steps, plus the log-ratio signals) the step time is 1.011x that with KL off. 256 tokens at
# V = 128,256 take ~376 MiB of float32 logits (3 x chunk x V x 4 bytes), comparable to the 4096-token x
# 32,768-vocabulary tile (256 MiB in bf16) that TRL's own fused LM head allocates.
KL_EXACT_STEPS_DEFAULT = 10
KL_CHUNK_SIZE_DEFAULT = 256
# The sampled sequence KL at each evaluation (benchmarks/bench_kl.py, "sampled sequence KL"): 8 prompts x 128 new
# tokens, one sample each: about two incremental decodes (policy and reference) of 8 x 128 tokens. 8, not 32: on
# the pretrained SmolLM2-135M (benchmarks/RESULTS.md, "overhead-real") 32 prompts cost 14.2 training steps per
# evaluation (28% of a run evaluating every 50 steps); 8 prompts, one batch, cost about a quarter of that, within
# 5% of a run whose evaluations are at least ~75 steps apart (the seed recipe evaluates every 200).
KL_SEQUENCE_PROMPTS_DEFAULT = 8
KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT = 128


@dataclass(frozen=True)
class KLSettings:
    """The KL monitoring settings of a config; a plain `DPOConfig` gets the defaults."""

    exact_steps: int = KL_EXACT_STEPS_DEFAULT
    chunk_size: int = KL_CHUNK_SIZE_DEFAULT
    drift: bool = True
    sequence_prompts: int = KL_SEQUENCE_PROMPTS_DEFAULT
    sequence_max_new_tokens: int = KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT
    sequence_samples: int = 1


def _int_setting(args: Any, name: str, default: int, low: int, advice: str) -> int:
    value = getattr(args, name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}. {advice}")
    return value


def kl_settings(args: Any) -> KLSettings:
    """Read and check the `kl_*` settings (defaults where `args` lacks them, e.g. a plain `DPOConfig`)."""
    drift = getattr(args, "kl_drift", True)
    if not isinstance(drift, bool):
        raise ConfigError(f"kl_drift must be True or False, got {drift!r}.")
    return KLSettings(
        exact_steps=_int_setting(
            args,
            "kl_exact_steps",
            KL_EXACT_STEPS_DEFAULT,
            0,
            f"Use 0 to turn kl/exact off, or N to compute it every N optimizer steps (default {KL_EXACT_STEPS_DEFAULT}).",
        ),
        chunk_size=_int_setting(
            args,
            "kl_chunk_size",
            KL_CHUNK_SIZE_DEFAULT,
            1,
            f"Tokens per chunk; lower it to save memory at large vocabularies (default {KL_CHUNK_SIZE_DEFAULT}).",
        ),
        drift=drift,
        sequence_prompts=_int_setting(
            args,
            "kl_sequence_prompts",
            KL_SEQUENCE_PROMPTS_DEFAULT,
            0,
            f"Use 0 to turn the sampled sequence KL off (default {KL_SEQUENCE_PROMPTS_DEFAULT} eval prompts).",
        ),
        sequence_max_new_tokens=_int_setting(
            args,
            "kl_sequence_max_new_tokens",
            KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT,
            1,
            f"The length limit of each sampled completion (default {KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT}).",
        ),
        sequence_samples=_int_setting(
            args, "kl_sequence_samples_per_prompt", 1, 1, "Completions sampled per prompt (default 1)."
        ),
    )
