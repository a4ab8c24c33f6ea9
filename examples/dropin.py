"""Drop-in use from Python: the same code as with `trl.DPOTrainer`, with cDPO and registry losses available.

Offline, CPU, under a minute: trains the tiny local Llama of the embedded default (character tokenizer, taught
addition by a short SFT and cached on first use) on the shipped arithmetic preference pairs, and prints the
held-out reward accuracy before and after.

    python examples/dropin.py [--max-steps 100] [--output-dir runs/dropin]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import fields

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network

from datasets import load_dataset  # noqa: E402

# was: from trl import DPOConfig, DPOTrainer
from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer
from trl_conservative.demo.embedded import builtin_dataset_files, builtin_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--output-dir", default=None)
    cli = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = builtin_model_path(log=print)  # a local folder written by save_pretrained
        data = load_dataset("json", data_files=builtin_dataset_files())

        # TRL turns gradient checkpointing on by default; a tiny model does not need it. transformers >= 5.23 calls
        # it activation_checkpointing, the transformers 4 beside TRL 0.2x gradient_checkpointing.
        names = {f.name for f in fields(ConservativeDPOConfig)}
        checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
        args = ConservativeDPOConfig(
            output_dir=cli.output_dir or os.path.join(tmp, "out"),
            loss_type="cdpo",  # conservative DPO; `sigmoid` with label_smoothing > 0 means the same, as in TRL <= 0.28
            beta=0.3,
            label_smoothing=0.1,
            learning_rate=3e-4,
            lr_scheduler_type="constant",
            max_steps=cli.max_steps,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            max_length=16,
            logging_steps=10,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            **{checkpointing: False},
        )
        trainer = ConservativeDPOTrainer(
            model=str(model_dir), args=args, train_dataset=data["train"], eval_dataset=data["test"]
        )
        before = trainer.evaluate()["eval_rewards/accuracies"]
        trainer.train()
        after = trainer.evaluate()["eval_rewards/accuracies"]
        print(f"held-out reward accuracy: {before:.3f} before, {after:.3f} after {cli.max_steps} steps")
        if cli.output_dir:
            trainer.save_model(cli.output_dir)


if __name__ == "__main__":
    main()
