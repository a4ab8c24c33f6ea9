"""Trains the tiny model for `tests/test_kl_multiprocess.py`; run alone or under `torchrun --nproc_per_node 2`.

Usage: python kl_multiprocess_worker.py POLICY_DIR REFERENCE_DIR OUT_JSON PER_DEVICE_BATCH
The learning rate is 1e-30, too small to move a float32 weight (0 is refused as meaningless), so both runs see
the same (policy, reference) pair at every step: their KL values may
differ only by float rounding. (With lr > 0 they drift apart: the 2-process gradient, all-reduced over
differently padded micro-batches, differs from the 1-process one in the last bits, and optimizer steps
amplify that.) Rank 0 writes the logged metrics to OUT_JSON.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(policy_dir: str, reference_dir: str, out_json: str, per_device_batch: int) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from trl_conservative import ConservativeDPOTrainer
    from trl_conservative.demo.tiny import tiny_preference_rows
    from trl_conservative.reliability.process_exit import leave_process_group
    from trl_conservative.testing import tiny_config

    args = tiny_config(
        os.path.join(os.path.dirname(out_json), "out"),
        per_device_train_batch_size=per_device_batch,
        per_device_eval_batch_size=per_device_batch,
        learning_rate=1e-30,
        kl_exact_steps=1,
        kl_chunk_size=7,
        kl_sequence_prompts=5,  # 5 prompts over 2 processes: 3 on one, 2 on the other
        kl_sequence_max_new_tokens=8,
        kl_sequence_samples_per_prompt=2,
    )
    rows = tiny_preference_rows(16, seed=0)
    trainer = ConservativeDPOTrainer(
        policy_dir,
        ref_model=AutoModelForCausalLM.from_pretrained(reference_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:6]),  # 6 pairs: the last 2-process eval batch is padded
    )
    trainer.train()
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        logs = [h for h in trainer.state.log_history if "loss" in h]
        with open(out_json, "w") as f:
            pairs = trainer.pair_scores.state()  # every process's pairs, gathered at each step
            json.dump(
                {"world_size": trainer.accelerator.num_processes, "train": logs, "eval": metrics, "pairs": pairs}, f
            )
    leave_process_group(0, wait=True)  # the barrier, then no interpreter teardown (it can abort under gloo)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
