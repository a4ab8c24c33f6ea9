"""`RunPlan`: what `trl-conservative run` will do, decided before it does any of it (`plan_run`).

Planning reads and checks: the model path (the builtin model is built into its cache), the data, the resume, the
output folder and the rows (`preflight.py`). It writes nothing into `output_dir` and leaves no process-wide state
behind (environment, warning filters, torch settings, the config's fields); every user mistake is a `ConfigError`.
`runner.run_training` then acts on the plan: it builds the trainer, locks the folder, trains and writes the report.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

from trl_conservative.demo.embedded import BUILTIN_MODEL
from trl_conservative.losses.plan import LossPlan
from trl_conservative.reliability.callback_state import SettingsStamp
from trl_conservative.reliability.end_of_run import EndOfRunGuard
from trl_conservative.reliability.output_dir import RunStamp
from trl_conservative.trainer.config import loss_plan

from .args import RunSpec
from .data import PreferenceData, load_preference_data, resolve_model
from .preflight import Preflight, preflight
from .remote_code import remote_code_allowed
from .resume import settings_record
from .settings import kl_monitor_settings

__all__ = ["ModelSource", "RunPlan", "TrainingStarted", "plan_run"]


@dataclass
class ModelSource:
    """Where the policy comes from and how it is loaded."""

    name: str  # model_name_or_path as configured
    path: str  # what it resolved to: a local folder or a hub id
    init_kwargs: dict[str, Any]  # `from_pretrained` arguments: the config's model_init_kwargs for this run
    trust_remote_code: bool
    # TRL 0.2x with trust_remote_code: TRL's own loader cannot run the model's code, so the runner loads the model
    # (and its tokenizer) itself and hands TRL the instances.
    load_here: bool = False


@dataclass
class RunPlan:
    """Everything one run is made of, for `runner.run_training` to act on (and tests to inspect)."""

    spec: RunSpec  # the parsed, checked settings
    losses: LossPlan  # the loss plan, resolved once (when the config was built)
    model: ModelSource
    data: PreferenceData  # the rows to train and evaluate on, as checked (bad rows dropped when asked)
    checked: Preflight  # resume checkpoint, identity and run id
    peft_config: Any
    trainer_kwargs: dict[
        str, Any
    ]  # what the installed TRL takes beside model, args, data, PEFT and callbacks
    callbacks: list[Any]
    guard: EndOfRunGuard  # among the callbacks: holds signals while the trained weights are saved
    started: TrainingStarted  # among the callbacks: whether train() got past its setup
    torch_threads: int | None = None  # intra-op threads for the run (None: torch's default)
    notes: list[str] = field(default_factory=list)


class TrainingStarted(TrainerCallback):  # type: ignore[misc]
    """Records `on_train_begin`: transformers builds the data loader, the optimizer and the schedule before it, so an
    exception before it comes from those settings; after it, from a training step."""

    def __init__(self) -> None:
        self.began = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.began = True


def plan_run(spec: RunSpec, *, log: Callable[[str], None] = print, console: Any = None) -> RunPlan:
    """Check everything a user can get wrong and decide how the run goes; nothing is written to `output_dir`."""
    from trl import get_peft_config, get_quantization_config

    training, script, model_args = spec.training, spec.script, spec.model
    for note in spec.notes:  # settings read under another name on the installed transformers
        log(note)
    trust = remote_code_allowed(spec)
    path = resolve_model(str(model_args.model_name_or_path), log=log)
    data = load_preference_data(script, training)
    init_kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    trainer_kwargs = _trainer_kwargs(
        training, init_kwargs, get_quantization_config(model_args), trust_remote_code=trust
    )
    # the config's own model_init_kwargs win (DPOConfig has parsed a JSON string given on the command line)
    init_kwargs.update(training.model_init_kwargs or {})  # type: ignore[arg-type]
    model = ModelSource(
        name=str(model_args.model_name_or_path),
        path=path,
        init_kwargs=init_kwargs,
        trust_remote_code=trust,
        load_here=trust and not hasattr(training, "trust_remote_code"),
    )
    checked = preflight(
        spec, data, path, trust_remote_code=trust, revision=init_kwargs.get("revision"), log=log
    )
    guard, started = EndOfRunGuard(), TrainingStarted()
    return RunPlan(
        spec=spec,
        losses=loss_plan(training),
        model=model,
        data=checked.data,
        checked=checked,
        peft_config=get_peft_config(model_args),
        trainer_kwargs=trainer_kwargs,
        callbacks=_callbacks(spec, checked, guard, started, console),
        guard=guard,
        started=started,
        # The tiny builtin model gains nothing from intra-op threads; on a busy 2-core machine one thread is about
        # 2x faster than two (measured: 100 SFT steps 9.7 s vs 21.4 s). Not so the pretrained one.
        torch_threads=1 if model.name == BUILTIN_MODEL else None,
    )


def _callbacks(
    spec: RunSpec, checked: Preflight, guard: EndOfRunGuard, started: TrainingStarted, console: Any
) -> list[Any]:
    from trl_conservative.report.live import LiveProgressCallback

    callbacks: list[Any] = [LiveProgressCallback(console)] if spec.script.live else []
    callbacks.append(RunStamp(checked.run_id, checked.identity))  # the run id in every checkpoint
    callbacks.append(SettingsStamp(settings_record(spec)))  # and the settings a resume is compared with
    callbacks.append(guard)  # signals wait while the trained weights are saved (on_train_end onwards)
    callbacks.append(started)
    monitor = kl_monitor_settings(spec.script)
    if monitor is not None:
        from trl_conservative.kl.monitor import KLMonitorCallback

        callbacks.append(KLMonitorCallback(**monitor))
    return callbacks


def _trainer_kwargs(
    training: Any, init_kwargs: dict[str, Any], quantization_config: Any, *, trust_remote_code: bool
) -> dict[str, Any]:
    """The trainer's keyword arguments the two TRL lines take in different places; `init_kwargs` (the model's
    `from_pretrained` arguments) is completed in place.

    TRL 1.16 takes `quantization_config` as a trainer argument and `trust_remote_code` in its config. TRL 0.2x
    has neither: both go to the model's `from_pretrained` (with a k-bit device map, as TRL 0.2x's `trl dpo` does;
    the runner loads the tokenizer itself when code is trusted).
    """
    import trl

    kwargs: dict[str, Any] = {}
    if "quantization_config" in inspect.signature(trl.DPOTrainer.__init__).parameters:
        kwargs["quantization_config"] = quantization_config
    elif quantization_config is not None:
        init_kwargs["quantization_config"] = quantization_config
        init_kwargs["device_map"] = trl.get_kbit_device_map()  # type: ignore[attr-defined]  # TRL 0.2x only
    if not hasattr(training, "trust_remote_code"):
        init_kwargs["trust_remote_code"] = trust_remote_code
    return kwargs
