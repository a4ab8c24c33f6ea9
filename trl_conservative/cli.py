"""The `trl-conservative` console script: `run`, `losses`, `report OUTPUT_DIR`, `examples`, `env`.

Heavy imports (torch, transformers, TRL, rich) happen inside the commands, so `--help` is fast. A user error
(`ConfigError`: unknown setting, bad value, missing file or model, unusable dataset; or `UnsupportedTRLError`: the
installed TRL is outside the supported range) exits with status 2 and one line naming the problem and the fix,
without a traceback.

Several processes: ``accelerate launch --multi_gpu --num_processes 2 -m trl_conservative.cli run --config x.yaml``
(add ``--use_cpu true`` to the run's settings on a CPU machine), or ``torchrun --nproc_per_node 2 -m
trl_conservative.cli run ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .errors import ConfigError, PluginError, TrainingHalted, UnsupportedTRLError
from .reliability.process_exit import leave_process_group

__all__ = [
    "EPILOG",
    "INTERRUPTED",
    "USER_ERROR",
    "build_parser",
    "main",
]

USER_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it

EPILOG = """\
examples:
  trl-conservative run                                  # the embedded offline default (tiny model, ~1 min on CPU)
  trl-conservative run --config builtin:losses/ipo                # a shipped recipe (`examples` lists them)
  trl-conservative run --config builtin:llama31_8b_cdpo_lora --learning_rate 1e-6
  trl-conservative examples copy llama31_8b_cdpo_lora --to .      # a copy to edit
  trl-conservative losses
  trl-conservative report trl-conservative-output
  trl-conservative env                                  # versions to paste into a bug report
"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="trl-conservative",
        description="DPO training with pluggable losses (cDPO, IPO, plugins), KL monitoring and a report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trl-conservative {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "run",
        add_help=False,
        help="train: `run [--config FILE.yaml] [--SETTING VALUE ...]`; no config runs the embedded default. "
        "`run --help` lists every setting.",
    )
    sub.add_parser("losses", help="list the registered losses: source, parameters, citation")
    report = sub.add_parser("report", help="re-render the report of a finished run")
    report.add_argument("output_dir", metavar="OUTPUT_DIR", help="the output_dir of a finished run")
    examples = sub.add_parser(
        "examples",
        help="the shipped recipes and accelerate configs: list them, print one's path, or copy them",
        description="`examples` lists them; `examples path NAME` prints a file's installed path (for accelerate "
        "launch --config_file); `examples copy [NAME ...] --to DIR` writes copies to edit. `run --config "
        "builtin:NAME` runs a recipe as shipped.",
    )
    examples.add_argument("action", nargs="?", choices=["list", "path", "copy"], default="list")
    examples.add_argument("names", nargs="*", metavar="NAME", help="e.g. losses/cdpo, accelerate/multi_gpu")
    examples.add_argument("--to", default=".", metavar="DIR", help="copy: the folder to write into (default: .)")
    sub.add_parser("env", help="print the versions and settings to paste into a bug report")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    status = _main(args)
    # One process of a multi-process run: wait for the others when all went well (rank 0 may still be writing the
    # report), then exit without the interpreter teardown that can abort a finished gloo process.
    return leave_process_group(status, wait=status == 0)


def _main(args: list[str]) -> int:
    try:
        if args and args[0] == "run":
            return _run(args[1:])
        parsed = build_parser().parse_args(args)
        if parsed.command == "losses":
            return _losses()
        if parsed.command == "report":
            return _report(parsed.output_dir)
        if parsed.command == "examples":
            return _examples(parsed.action, parsed.names, parsed.to)
        if parsed.command == "env":
            from .environment import environment_info, format_environment

            print(format_environment(environment_info()))
            return 0
        build_parser().print_help()
        return 0
    # A plugin fault or an unsupported TRL is the user's environment, not a crash.
    except (ConfigError, PluginError, UnsupportedTRLError) as exc:
        print(f"trl-conservative: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return USER_ERROR
    except TrainingHalted as exc:  # NaN guard (1), SIGINT (130), SIGTERM (143): checkpoint and resume command
        from .run.commands import halted_message

        if int(os.environ.get("RANK", "0")) == 0:
            print(f"trl-conservative: {halted_message(exc, args[1:])}", file=sys.stderr)
        return exc.exit_status
    except (
        KeyboardInterrupt
    ):  # Ctrl-C outside training's own handler (loading, warm-up, a second Ctrl-C, saving)
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                "trl-conservative: interrupted by Ctrl-C; stopped without saving a checkpoint. Files already in "
                "output_dir are complete (each is replaced in one rename); run the command again to start over.",
                file=sys.stderr,
            )
        return INTERRUPTED


def _run(argv: list[str]) -> int:
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        # The embedded default needs no network: say so before huggingface_hub reads its settings.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from .run.args import parse_run_args
    from .run.deferred_logs import deferred_logs

    with deferred_logs("trl_conservative.registry"):  # a plugin warning only if no error line follows
        spec = parse_run_args(argv)
    if spec.script.live:
        _quiet_libraries()
    from .report.console import RunReport, make_console
    from .run.refusals import OUT_OF_MEMORY_STATUS, out_of_memory_line
    from .run.runner import run_training

    console = make_console()
    try:
        summary = run_training(spec, log=lambda msg: console.print(msg, style="dim"), console=console)
    except Exception as exc:  # out of memory: one line naming the settings that lower it; anything else raises
        line = out_of_memory_line(exc, spec.training)
        if line is None:
            raise
        print(f"trl-conservative: {line}", file=sys.stderr)
        return OUT_OF_MEMORY_STATUS
    if summary is not None:
        console.print(RunReport(summary))
    return 0


def _quiet_libraries() -> None:
    """Progress bars of dataset preparation and weight loading would break up the live line."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _losses() -> int:
    from .registry.registry import get_registry
    from .report.console import make_console
    from .report.losses_table import LossTable
    from .trainer.trl_compat import trl_native_losses

    registry = get_registry()
    native = sorted(trl_native_losses() - set(registry.losses))
    table = LossTable([registry.losses[name] for name in registry.names()], dict(registry.failures), native)
    make_console().print(table)
    return 0


def _report(output_dir: str) -> int:
    from .report.console import RunReport, make_console
    from .report.summary import RunSummary

    make_console().print(RunReport(RunSummary.load(output_dir)))
    return 0


def _examples(action: str, names: list[str], to: str) -> int:
    from pathlib import Path

    from .recipes import copy_recipes, recipe_names, recipe_path

    if action == "path":
        if len(names) != 1:
            raise ConfigError("`examples path` takes one name, e.g. `trl-conservative examples path accelerate/multi_gpu`.")
        print(recipe_path(names[0]))
    elif action == "copy":
        for written in copy_recipes(names, Path(to)):
            print(written)
    else:
        if names:
            raise ConfigError(f"`examples` lists every shipped file; to copy {' '.join(names)}, say `examples copy`.")
        for name in recipe_names():
            if name.startswith("accelerate/"):
                use = f'accelerate launch --config_file "$(trl-conservative examples path {name})" ...'
            else:
                use = f"trl-conservative run --config builtin:{name}"
            print(f"{name:30} {use}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
