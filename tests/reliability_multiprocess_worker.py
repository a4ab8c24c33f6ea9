"""A 2-process (torchrun, gloo) run for `tests/test_reliability_multiprocess.py`; only rank 1 misbehaves.

Usage: torchrun --nproc_per_node 2 reliability_multiprocess_worker.py MODEL_DIR OUT_DIR MODE
MODE "signal": rank 1 alone receives SIGTERM during step 2. MODE "nan": rank 1 alone computes a NaN loss at
step 3. Each rank writes OUT_DIR/rank{N}.json with what it raised, so the test can check that both ranks stopped
at the same step (no hang in a collective, no rank training on alone).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(model_dir: str, out_dir: str, mode: str) -> None:
    import torch.nn.functional as F
    from datasets import Dataset
    from transformers import TrainerCallback

    from trl_conservative import (
        ConservativeDPOConfig,
        ConservativeDPOTrainer,
        LossOutput,
        TrainingHalted,
        hookimpl,
    )
    from trl_conservative.demo.tiny import tiny_preference_rows
    from trl_conservative.registry import registered_plugins
    from trl_conservative.reliability.process_exit import leave_process_group

    rank = int(os.environ["RANK"])

    class NanOnRank1:
        name = "nan_on_rank1"
        calls = 0

        def __call__(self, inputs: Any) -> LossOutput:
            self.calls += 1
            h = inputs.chosen_logratios - inputs.rejected_logratios
            scale = float("nan") if (rank == 1 and self.calls == 3) else 1.0
            return LossOutput(
                losses=-F.logsigmoid(inputs.beta * h) * scale,
                chosen_rewards=inputs.beta * inputs.chosen_logratios.detach(),
                rejected_rewards=inputs.beta * inputs.rejected_logratios.detach(),
            )

    class Plugin:
        @hookimpl
        def register_losses(self, register: Any) -> None:
            register(NanOnRank1())

    class SignalRank1(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if rank == 1 and state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    with registered_plugins(("nanp", Plugin())):
        args = ConservativeDPOConfig(
            output_dir=os.path.join(out_dir, "run"),
            use_cpu=True,
            report_to="none",
            per_device_train_batch_size=2,
            max_steps=6,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="steps",
            save_steps=2 if mode == "nan" else 100,
            seed=0,
            gradient_checkpointing=False,
            disable_tqdm=True,
            max_length=32,
            dataloader_num_workers=0,
            loss_type="nan_on_rank1" if mode == "nan" else "cdpo",
            label_smoothing=0.1,
        )
        trainer = ConservativeDPOTrainer(
            model_dir,
            args=args,
            train_dataset=Dataset.from_list(tiny_preference_rows(32, seed=0)),
            callbacks=[SignalRank1()] if mode == "signal" else [],
        )
        result: dict[str, Any] = {"rank": rank}
        try:
            trainer.train()
            result["error"] = None
        except TrainingHalted as exc:
            result.update(error=type(exc).__name__, message=str(exc), checkpoint=exc.checkpoint)
            result["step"] = getattr(exc, "step", None)
        result["global_step"] = trainer.state.global_step
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    leave_process_group(0, wait=True)  # the barrier, then no interpreter teardown (it can abort under gloo)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
