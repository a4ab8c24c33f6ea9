"""Every code block of README.md and docs/*.md runs, so the docs cannot drift from the code.

- ```python blocks are executed, a page's blocks in order in one namespace (a tutorial's later blocks use what its
  earlier ones defined), in a scratch working directory; training ones run on the tiny embedded model.
- ```bash and ```console lines that call `trl-conservative` (also through `.venv/bin/`, `accelerate launch` or
  `torchrun ... -m trl_conservative.cli`) are checked: `run` is parsed by the command's own settings parser (the
  same `parse_run_args` the command uses: unknown flags, types, ranges and combinations fail, nothing trains),
  `report` by its argument parser, and the quick commands (`losses`, `env`, `examples`, `--help`, `--version`)
  are run. A ```console command shown with a `trl-conservative: error:` line is run and must print that line and
  exit 2. `scripts/setup.sh && .venv/bin/python -m pytest` must be the command `.ci/run` runs.
- ```yaml blocks are configs: loaded by the command's config loader and parsed (a fragment on top of the embedded
  default), or accelerate configs, loaded by accelerate.

A block that cannot run here says why in a marker on the line before it, which the test reports as a skip:
`<!-- docs-test: skip: REASON -->`. `<!-- docs-test: parse-only: REASON -->` checks a bash block's commands
without running even the quick ones; `<!-- docs-test: setup NAME -->` runs the named setup (SETUPS below: the
names the block uses but does not define) before a python block.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!-- docs-test: (skip|parse-only|setup)\b:? ?(.*?) -->$")
KNOWN_LANGUAGES = {"python", "bash", "console", "yaml", ""}  # "": a plain block (output, a diagram): not run
SLOW_CALLS = (
    ".train(",
    "train_two_steps(",
    "builtin_model_path(",
)  # trains (the embedded model's SFT included)

# Names a block uses but does not show, by setup name. Kept to what a reader can infer from the page.
SETUPS = {
    "tiny-trainer": """
from datasets import load_dataset
from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer
from trl_conservative.demo.embedded import builtin_dataset_files, builtin_model_path

model = str(builtin_model_path())
dataset = load_dataset("json", data_files=builtin_dataset_files())["train"]
args = ConservativeDPOConfig(output_dir="out", loss_type="cdpo", label_smoothing=0.1, max_steps=2,
                             per_device_train_batch_size=8, report_to="none", use_cpu=True)
trainer = ConservativeDPOTrainer(model, args=args, train_dataset=dataset)
""",
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: tuple[str, str] | None  # (kind, argument) of a `<!-- docs-test: ... -->` line before the fence

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        assert end < len(lines), f"{page.relative_to(ROOT)}:{i + 1}: the code block is never closed"
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked = MARKER.match(before)
        found.append(
            Block(
                page=page,
                line=i + 1,
                language=opening.group(1),
                code="\n".join(lines[i + 1 : end]) + "\n",
                marker=(marked.group(1), marked.group(2)) if marked else None,
            )
        )
        i = end + 1
    return found


BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def _param(block: Block, *marks: pytest.MarkDecorator) -> object:
    return pytest.param(block, id=block.where, marks=list(marks))


def _is_slow(code: str) -> bool:
    return any(call in code for call in SLOW_CALLS)


# --------------------------------------------------------------------------------------------------- the blocks


def test_blocks_are_found_and_every_language_is_known() -> None:
    assert len(PAGES) > 10 and len(BLOCKS) > 30, "the pages or their code blocks were not found"
    unknown = [f"{b.where} ```{b.language}" for b in BLOCKS if b.language not in KNOWN_LANGUAGES]
    assert not unknown, f"code blocks in a language this test does not run: {unknown}; add a check for it"
    stray = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        marked = len(re.findall(r"^<!-- docs-test:", text, flags=re.M))
        stray += [str(page.relative_to(ROOT))] * (
            marked - sum(1 for b in BLOCKS if b.page == page and b.marker)
        )
    assert not stray, f"a docs-test marker that is not right before a code block, or is malformed: {stray}"


# ------------------------------------------------------------------------------------------------------- python


def _python_pages() -> list[object]:
    params = []
    for page in PAGES:
        blocks = [b for b in BLOCKS if b.page == page and b.language == "python"]
        if not blocks:
            continue
        run = [b for b in blocks if not (b.marker and b.marker[0] == "skip")]
        code = "".join(b.code + SETUPS.get(b.marker[1], "") if b.marker else b.code for b in run)
        marks = [pytest.mark.slow] if _is_slow(code) else []
        params.append(pytest.param(page, id=str(page.relative_to(ROOT)), marks=marks))
    return params


def run_python(blocks: list[Block], monkeypatch: pytest.MonkeyPatch) -> None:
    """Execute a page's python blocks in order in one module (skipped ones aside), in the current directory."""
    name = "docs_page_" + re.sub(r"\W", "_", blocks[0].page.stem)
    module = types.ModuleType(name)  # a real module: a block may pass itself to registered_plugins
    monkeypatch.setitem(sys.modules, name, module)
    for block in blocks:
        if block.marker and block.marker[0] == "skip":
            continue  # reported by test_marked_blocks_say_why_they_are_skipped
        if block.marker and block.marker[0] == "setup":
            assert block.marker[1] in SETUPS, f"{block.where}: unknown setup {block.marker[1]!r}"
            exec(compile(SETUPS[block.marker[1]], f"<setup {block.marker[1]}>", "exec"), module.__dict__)
        try:
            exec(compile(block.code, block.where, "exec"), module.__dict__)
        except Exception as exc:
            raise AssertionError(f"the python block at {block.where} failed: {exc!r}") from exc


@pytest.mark.parametrize("page", _python_pages())
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_python([b for b in BLOCKS if b.page == page and b.language == "python"], monkeypatch)


SKIPPED = [b for b in BLOCKS if b.marker and b.marker[0] == "skip"]


@pytest.mark.parametrize("block", [_param(b) for b in SKIPPED] or [pytest.param(None, id="none")])
def test_marked_blocks_say_why_they_are_skipped(block: Block | None) -> None:
    if block is None:
        return
    assert len(block.marker[1]) > 10, f"{block.where}: say why the block cannot run here"  # type: ignore[index]
    pytest.skip(f"{block.where} not run: {block.marker[1]}")  # type: ignore[index]


def test_few_blocks_are_skipped() -> None:
    assert len(SKIPPED) <= 3, [b.where for b in SKIPPED]


# -------------------------------------------------------------------------------------------- commands (bash)

TEST_COMMAND = "scripts/setup.sh && .venv/bin/python -m pytest"


@dataclass(frozen=True)
class Command:
    where: str
    argv: list[str]  # trl-conservative's own arguments
    config_file: str | None = None  # accelerate launch --config_file


def commands_in(block: Block) -> list[Command]:
    """The `trl-conservative` invocations of a bash/console block (one per line, continuations joined)."""
    lines = re.sub(r"\\\n\s*", " ", block.code).splitlines()
    found = []
    for number, raw in enumerate(lines, start=block.line + 1):
        line = raw[2:] if block.language == "console" and raw.startswith("$ ") else raw
        if block.language == "console" and not raw.startswith("$ "):
            continue  # output
        following = lines[number - block.line] if number - block.line < len(lines) else ""
        if block.language == "console" and following.startswith("trl-conservative: error:"):
            continue  # a command shown failing: test_console_error_lines runs it and compares the line
        for part in line.split("&&"):
            command = _command(part.strip(), f"{block.where} (line {number})")
            if command is not None:
                found.append(command)
    return found


OURS = {"trl-conservative", "accelerate", "torchrun"}


def _command(part: str, where: str) -> Command | None:
    substitution = re.search(r'"?\$\(trl-conservative examples path (\S+)\)"?', part)
    part = (
        part.replace(substitution.group(0), f"builtin-path:{substitution.group(1)}") if substitution else part
    )
    if not part.split() or part.split()[0].removeprefix(".venv/bin/") not in OURS:
        return None  # another program (pip, python, mkdocs, cp, ...): not ours to check
    words = shlex.split(part, comments=True)
    program = words[0].removeprefix(".venv/bin/")
    if program == "trl-conservative":
        return Command(where, words[1:])
    if program in ("accelerate", "torchrun") and "-m" in words:
        at = words.index("-m")
        assert words[at + 1] == "trl_conservative.cli", f"{where}: {part}"
        config = words[words.index("--config_file") + 1] if "--config_file" in words else None
        return Command(where, words[at + 2 :], config_file=config)
    return None


def _bash_blocks() -> list[object]:
    return [_param(b) for b in BLOCKS if b.language in ("bash", "console") and commands_in(b)]


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory where the docs' example file names exist: my_run.yaml is the embedded default."""
    from trl_conservative.demo.embedded import DEFAULT_CONFIG

    shutil.copy(DEFAULT_CONFIG, tmp_path / "my_run.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


QUICK = {"losses", "env", "examples", "--help", "-h", "--version"}


@pytest.mark.parametrize("block", _bash_blocks())
def test_commands_parse(block: Block, sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if block.marker and block.marker[0] == "skip":
        pytest.skip(f"{block.where} not run: {block.marker[1]}")
    parse_only = block.language == "console" or (block.marker is not None and block.marker[0] == "parse-only")
    for command in commands_in(block):
        check_command(command, parse_only=parse_only)
    capsys.readouterr()


def check_command(command: Command, *, parse_only: bool) -> None:
    """Parse a `trl-conservative` command with the command's own parsers; run it if it is a quick one."""
    from trl_conservative.cli import build_parser, main
    from trl_conservative.recipes import recipe_path
    from trl_conservative.run.args import parse_run_args

    argv = command.argv
    if command.config_file is not None:
        if command.config_file.startswith("builtin-path:"):
            assert recipe_path(command.config_file.removeprefix("builtin-path:")).is_file(), command.where
        else:
            assert (ROOT / command.config_file).is_file(), (
                f"{command.where}: {command.config_file} is missing"
            )
    if argv and argv[0] == "run" and not {"--help", "-h"} & set(argv):
        try:
            parse_run_args([*argv[1:], "--use_cpu", "true"])  # the GPU recipes' bf16 parses on a CPU so
        except Exception as exc:
            raise AssertionError(f"{command.where}: trl-conservative {shlex.join(argv)}: {exc}") from exc
    elif argv and argv[0] == "report":
        assert build_parser().parse_args(argv).output_dir, command.where
    elif not parse_only and (not argv or argv[0] in QUICK or {"--help", "-h"} & set(argv)):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse's --help and --version
            status = exit_.code or 0
        assert status == 0, f"{command.where}: trl-conservative {shlex.join(argv)} exited {status}"
    else:
        with pytest.raises(SystemExit) if {"--help", "-h"} & set(argv) else contextlib.nullcontext():
            build_parser().parse_args(argv)


@pytest.mark.parametrize("block", _bash_blocks())
def test_the_test_command_is_what_ci_runs(block: Block) -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for line in block.code.splitlines():
        if line.strip().startswith("scripts/setup.sh") and "pytest" in line:
            assert line.strip() == TEST_COMMAND and TEST_COMMAND in ci.splitlines(), (block.where, line)


def _console_errors() -> Iterator[tuple[Block, list[str], list[str]]]:
    for block in BLOCKS:
        if block.language not in ("console", "") or not block.code.startswith("$ "):
            continue
        lines = block.code.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ trl-conservative "):
                output = []
                for out in lines[i + 1 :]:
                    if out.startswith("$ "):
                        break
                    output.append(out)
                if output and output[0].startswith("trl-conservative: error:"):
                    yield block, shlex.split(line[2:])[1:], output


@pytest.mark.parametrize(
    ("block", "argv", "expected"), [pytest.param(*c, id=c[0].where) for c in _console_errors()]
)
def test_console_error_lines(
    block: Block, argv: list[str], expected: list[str], sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_console_error(argv, expected, capsys, block.where)


def check_console_error(
    argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """The command exits 2 printing exactly the lines shown."""
    from trl_conservative.cli import main

    capsys.readouterr()
    status = main(argv)
    printed = capsys.readouterr().err.strip().splitlines()
    assert (status, printed) == (2, expected), where


def test_a_console_error_is_checked() -> None:
    assert list(_console_errors()), (
        "no ```console block shows an error line any more: check this test's parser"
    )


# ------------------------------------------------------------------------------------------------------- yaml


def _yaml_blocks() -> list[object]:
    return [_param(b) for b in BLOCKS if b.language == "yaml"]


@pytest.mark.parametrize("block", _yaml_blocks())
def test_yaml_configs_load(block: Block, sandbox: Path) -> None:
    if block.marker and block.marker[0] == "skip":
        pytest.skip(f"{block.where} not run: {block.marker[1]}")
    check_yaml(block, sandbox)


def check_yaml(block: Block, folder: Path) -> None:
    """Load a run config the way `run --config` does (a fragment over the embedded default), or an accelerate one."""
    from trl_conservative.demo.embedded import DEFAULT_CONFIG
    from trl_conservative.run.args import load_yaml, parse_run_args

    data = yaml.safe_load(block.code)
    assert isinstance(data, dict), f"{block.where}: not a mapping"
    if "distributed_type" in data or "compute_environment" in data:
        from accelerate.commands.config.config_args import load_config_from_file

        (folder / "accelerate.yaml").write_text(block.code)
        load_config_from_file(str(folder / "accelerate.yaml"))
        return
    if "model_name_or_path" not in data:  # a fragment: the settings it shows, over the embedded default
        block_config = {**load_yaml(Path(DEFAULT_CONFIG)), **data}
        text = yaml.safe_dump(block_config)
    else:
        text = block.code
    (folder / "block.yaml").write_text(text)
    try:
        parse_run_args(["--config", str(folder / "block.yaml"), "--use_cpu", "true"])
    except Exception as exc:
        raise AssertionError(f"{block.where}: {exc}") from exc


def test_the_checks_can_fail(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each kind of check fails on a broken block, so a passing run means the blocks were really checked."""
    page = sandbox / "page.md"
    page.write_text(
        "```bash\ntrl-conservative run --learnig_rate 1e-6\n```\n\n"
        "```yaml\nlearnig_rate: 1.0e-6\n```\n\n"
        "```console\n$ trl-conservative run --beta 0\ntrl-conservative: error: not this line\n```\n\n"
        "<!-- docs-test: setup tiny-trainer -->\n```python\nprint(no_such_name)\n```\n"
    )
    bash, config, console, python = blocks_of(page)
    assert python.marker == ("setup", "tiny-trainer")
    for command in commands_in(bash):
        with pytest.raises(AssertionError, match="learnig_rate"):
            check_command(command, parse_only=False)
    with pytest.raises(AssertionError, match="learnig_rate"):
        check_yaml(config, sandbox)
    with pytest.raises(AssertionError, match="no_such_name"):
        run_python([python.__class__(python.page, python.line, "python", python.code, None)], monkeypatch)
    assert commands_in(console) == []  # a command shown failing is compared with its line instead:
    with pytest.raises(AssertionError, match="not this line"):
        check_console_error(
            ["run", "--beta", "0"], ["trl-conservative: error: not this line"], capsys, "page.md"
        )
