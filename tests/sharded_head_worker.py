"""Trains the tiny model with its LM head sharded, for `tests/test_sharded_head.py`.

Usage: python sharded_head_worker.py MODE POLICY_DIR REFERENCE_DIR OUT_JSON PER_DEVICE_BATCH LEARNING_RATE
MODE:
- `manual`: no sharding, and the same hand-written training loop as `fsdp2*` (run alone: the baseline);
- `fsdp2`, `fsdp2_reshard`, `fsdp2_head_alone`: policy and reference sharded with
  `torch.distributed.fsdp.fully_shard` (FSDP2) by hand, three placements of the LM head (see `shard_fsdp2`);
- `trainer`: no sharding, `trainer.train()` (run alone: the baseline for `zero3`);
- `zero3`: DeepSpeed ZeRO-3 through `TrainingArguments(deepspeed=...)` and `trainer.train()`.
Run the sharded modes under `torchrun --nproc_per_node 2` (gloo, CPU). Rank 0 writes the logged metrics.

Why by hand for FSDP: accelerate turns FSDP on only for GPU-like devices; on CPU it falls back to DDP
(`DistributedType.MULTI_CPU`), and FSDP1 itself refuses to run without an accelerator device. FSDP2's
`fully_shard` runs on CPU, so the worker shards the models the way accelerate does (each decoder layer, then
the root, which holds the embeddings, the final norm and the LM head) and trains with `training_step`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

STEPS = 2


def zero3_settings() -> dict[str, Any]:
    """TrainingArguments for ZeRO-3 on DeepSpeed's CPU accelerator, 2 processes over gloo.

    Without a GPU, transformers starts DeepSpeed's process group with no backend and then counts a single
    process (the batch-size check fails: "train_batch_size is not equal to micro_batch_per_gpu *
    gradient_acc_step * world_size 2 != 2 * 1 * 2"). So the process group is started here, with gloo, and
    the trainer is told to use that state (`use_configured_state`).
    """
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    del os.environ["ACCELERATE_USE_DEEPSPEED"]
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0}
    deepspeed = {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }
    # use_cpu=True would make accelerate skip DeepSpeed (it picks MULTI_CPU); DeepSpeed finds its CPU accelerator.
    return {"deepspeed": deepspeed, "use_cpu": False, "accelerator_config": {"use_configured_state": True}}


def shard_fsdp2(trainer: Any, layout: str) -> None:
    """Shard both models with FSDP2; `layout` says where the LM head goes.

    - `fsdp2`: as accelerate 1.15 does (`fsdp2_prepare_model`): each decoder layer, the embeddings, then
      [final norm, LM head] as one unit kept whole after the forward, then the root. The hook sees the
      unsharded head (the final norm's call unshards the unit), still whole when the KL projects.
    - `fsdp2_reshard`: the same, but the head's unit reshards after the forward: the tensor the hook saw is freed
      by the time the KL projects.
    - `fsdp2_head_alone`: the LM head is a unit of its own. TRL's fused head reads its weight without calling
      it, so it is never unsharded: the hook sees the DTensor shard.
    """
    from torch.distributed.fsdp import fully_shard

    for model in (trainer.model, trainer.ref_model):
        for layer in model.model.layers:
            fully_shard(layer, reshard_after_forward=True)
        fully_shard(model.get_input_embeddings(), reshard_after_forward=True)
        if layout == "fsdp2_head_alone":
            fully_shard(model.get_output_embeddings(), reshard_after_forward=True)
        else:
            tail = [model.model.norm, model.get_output_embeddings()]
            fully_shard(tail, reshard_after_forward=layout == "fsdp2_reshard")
        fully_shard(model)


def spy_on_heads() -> set[str]:
    """Record what kind of LM head tensor reached the gather (`Parameter`, `DTensor`, `... freed`, `... empty`)."""
    from trl_conservative.kl import sharded_head

    seen: set[str] = set()
    gather = sharded_head.full_heads

    def spy(heads: Any, models: Any = ()) -> Any:
        for weight, _bias in heads:
            kind = type(weight).__name__
            if weight.numel() == 0:
                kind += " empty"
            elif sharded_head._storage_freed(weight):
                kind += " freed"
            seen.add(kind)
        return gather(heads, models)

    sharded_head.full_heads = spy  # the trainer imports it at each call
    return seen


def manual_steps(trainer: Any) -> None:
    """`STEPS` optimizer steps through the trainer's own `training_step` (so its `compute_loss` and KL)."""
    trainer.create_optimizer()
    loader = trainer.get_train_dataloader()
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    for step, batch in zip(range(STEPS), loader, strict=False):
        trainer.state.global_step = step
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        trainer.state.global_step = step + 1
        # Averages and clears this step's metrics into log_history; the "loss" key marks a training log on TRL 0.2x,
        # whose `log` picks the train or eval metrics by it (TRL 1.16 by model.training).
        trainer.log({"loss": 0.0})


def main(
    mode: str, policy_dir: str, reference_dir: str, out_json: str, per_device_batch: int, lr: float
) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from trl_conservative import ConservativeDPOTrainer
    from trl_conservative.demo.tiny import tiny_preference_rows
    from trl_conservative.reliability.process_exit import leave_process_group
    from trl_conservative.testing import tiny_config

    args = tiny_config(
        os.path.join(os.path.dirname(out_json), "out"),
        per_device_train_batch_size=per_device_batch,
        learning_rate=lr,
        max_steps=STEPS,
        bf16=False,  # float32 everywhere: the runs may differ only by float rounding
        kl_exact_steps=1,
        kl_chunk_size=7,
        **(zero3_settings() if mode == "zero3" else {}),
    )
    rows = tiny_preference_rows(16, seed=0)
    trainer = ConservativeDPOTrainer(
        policy_dir,
        ref_model=AutoModelForCausalLM.from_pretrained(reference_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
    )
    seen = spy_on_heads()
    if mode in ("trainer", "zero3"):
        trainer.train()
    else:
        if mode.startswith("fsdp2"):
            shard_fsdp2(trainer, mode)
        manual_steps(trainer)
    head = trainer.model.get_output_embeddings().weight
    if trainer.is_world_process_zero():
        logs = [h for h in trainer.state.log_history if "kl/exact" in h]
        info = {
            "world_size": trainer.accelerator.num_processes,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "head_type": type(head).__name__,
            # What a projection outside the forward would have seen on this rank:
            "head_local_numel": (head.to_local() if hasattr(head, "to_local") else head).numel(),
            "heads_gathered": sorted(seen),
        }
        with open(out_json, "w") as f:
            json.dump({**info, "train": logs}, f)
    # Every rank is done once all reach its barrier (rank 0 has written the results); then exit without the
    # interpreter teardown that sometimes aborts a finished gloo process.
    leave_process_group(0, wait=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
