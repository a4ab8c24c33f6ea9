"""Faults at the end of a `trl-conservative run`: a signal or a full disk at a named phase.

`install_fault(phase, fault, patch)` wraps the function that phase runs so that its first call (that matches) sends
this process the signal, or raises `OSError(ENOSPC)`; `patch` is `monkeypatch.setattr` in a test.

As a worker: ``TRL_CONSERVATIVE_FAULT=model_save:SIGTERM python end_of_run_faults.py run --config x.yaml`` runs the
CLI in a fresh process with the fault installed and exits with its status.

Phases: final_evaluation (the evaluation at the last step, inside training), model_save (the final model written
into the staging folder), label_noise, model_card, trainer_state, curves, summary. Faults: SIGTERM, SIGINT, ENOSPC
(the first matching call fails), ENOSPC_ALWAYS (every matching call fails).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PHASES = (
    "final_evaluation",
    "model_save",
    "label_noise",
    "model_card",
    "trainer_state",
    "curves",
    "summary",
)
FAULT_ENV = "TRL_CONSERVATIVE_FAULT"


def install_fault(phase: str, fault: str, patch: Callable[[Any, str, Any], None]) -> None:
    import trl_conservative.report.plot as plot
    import trl_conservative.run.finish as finish
    from trl_conservative.reliability.end_of_run import FINAL_STAGE
    from trl_conservative.report.summary import RunSummary
    from trl_conservative.trainer.trainer import ConservativeDPOTrainer

    struck: list[bool] = []

    def strike() -> None:
        if struck and fault != "ENOSPC_ALWAYS":
            return
        struck.append(True)
        if fault.startswith("ENOSPC"):
            raise OSError(errno.ENOSPC, "No space left on device")
        os.kill(os.getpid(), getattr(signal, fault))

    def wrap(original: Any, when: Callable[..., bool] = lambda *a, **k: True) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if when(*args, **kwargs):
                strike()
            return original(*args, **kwargs)

        return wrapper

    if phase == "final_evaluation":
        last = lambda self, *a, **k: self.state.global_step >= self.state.max_steps > 0  # noqa: E731
        patch(ConservativeDPOTrainer, "evaluate", wrap(ConservativeDPOTrainer.evaluate, last))
    elif phase == "model_save":
        staged = lambda self, output_dir=None, *a, **k: FINAL_STAGE in str(output_dir)  # noqa: E731
        patch(ConservativeDPOTrainer, "save_model", wrap(ConservativeDPOTrainer.save_model, staged))
    elif phase == "label_noise":
        patch(finish, "report_suspected_flips", wrap(finish.report_suspected_flips))
    elif phase == "model_card":
        patch(ConservativeDPOTrainer, "create_model_card", wrap(ConservativeDPOTrainer.create_model_card))
    elif phase == "trainer_state":
        in_place = lambda trainer, path: FINAL_STAGE not in str(path)  # noqa: E731
        patch(finish, "save_trainer_state", wrap(finish.save_trainer_state, in_place))
    elif phase == "curves":
        patch(plot, "plot_run", wrap(plot.plot_run))
    elif phase == "summary":
        patch(RunSummary, "save", wrap(RunSummary.save))
    else:
        raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")


def main(argv: list[str]) -> int:
    phase, fault = os.environ[FAULT_ENV].split(":")
    install_fault(phase, fault, setattr)
    from trl_conservative.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
