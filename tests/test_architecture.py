"""docs/architecture.md stays true: it names every module of the package, and imports point down its layers.

The layers, lowest first, are drawn on that page ("Layers"); `LAYERS` below is the same list. A module may import
modules of its own layer or of a lower one, never of a higher one, whether at the top of the file or inside a
function (a lazy import is still a dependency), read with `ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trl_conservative"
PAGE = ROOT / "docs" / "architecture.md"

# Lowest first. A module belongs to the layer of the longest prefix naming it, so trainer/trl_compat.py (which
# imports nothing of ours but `errors`) sits in the bottom layer while the rest of trainer/ sits above reliability/.
LAYERS: list[tuple[str, ...]] = [
    (  # the base: names, errors and checks that everything shares
        "trl_conservative._version",
        "trl_conservative._lazy",
        "trl_conservative.errors",
        "trl_conservative.metric_names",
        "trl_conservative.training_args",
        "trl_conservative.file_checks",
        "trl_conservative.trainer.trl_compat",
    ),
    # the losses and their registry: the registry holds losses (losses/contract), the built-ins register through
    # its hook (registry/hookspecs) and plan.py resolves names through it; one layer, no cycle between modules
    ("trl_conservative.losses", "trl_conservative.registry"),
    ("trl_conservative.kl", "trl_conservative.flips"),  # pure measures over tensors and scores
    ("trl_conservative.reliability",),  # callbacks and files that keep a run safe; know no trainer class
    ("trl_conservative.report",),  # plain data over a run's files, and its renderables
    ("trl_conservative.model_card",),  # reads report's LabelNoise and number formatter
    ("trl_conservative.trainer",),  # composes all of the above around TRL's DPOTrainer
    ("trl_conservative.demo", "trl_conservative.recipes"),  # shipped models, data and recipes
    ("trl_conservative.testing",),  # the plugin author's kit: trains with the trainer on demo models
    ("trl_conservative.run",),  # `trl-conservative run`: plans and acts with everything below
    ("trl_conservative.environment", "trl_conservative.cli", "trl_conservative"),  # the doors: CLI, public API
]

# (importer, imported) pairs that may point up, each with its reason. Keep it empty unless a move is worse.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer of tests/test_architecture.py: add it (and to the page)"
    return found


def _root_names() -> dict[str, str]:
    """Where each name the root package exports lives: its `from .x import` lines and its lazy `_LAZY` table."""
    tree = ast.parse(MODULES["trl_conservative"].read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"trl_conservative.{node.module}"
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            table = ast.literal_eval(node.value)
            names.update({name: "trl_conservative" + where for name, where in table.items()})
    return names


ROOT_NAMES = _root_names()


def _target(base: str, name: str | None) -> str:
    """The module an import names: `base.name` when that is a module, else `base` (or, for a name the root
    package re-exports, the module it comes from)."""
    if name is not None and f"{base}.{name}" in MODULES:
        return f"{base}.{name}"
    if base == "trl_conservative" and name in ROOT_NAMES:
        return ROOT_NAMES[name]
    return base


def imports_of(module: str) -> list[tuple[str, int]]:
    """Every module of the package that `module` imports (anywhere in the file), with the line."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found += [(_target(base, alias.name), node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name == "trl_conservative" or name.startswith("trl_conservative.")]


def _page_tree() -> dict[str, str]:
    """The page's layout block: each top-level entry (`errors.py`, `losses/`) and the text that describes it."""
    text = PAGE.read_text(encoding="utf-8")
    block = text.split("```\ntrl_conservative/\n", 1)[1].split("```", 1)[0]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"^  (\S+)\s*(.*)$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2)
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


def test_every_module_is_named_on_the_architecture_page() -> None:
    entries = _page_tree()
    missing = []
    for path in MODULES.values():
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            if relative.name not in entries:
                missing.append(str(relative))
            continue
        folder = relative.parts[0] + "/"
        if folder not in entries:
            missing.append(folder)
            continue
        stem = path.stem
        if stem != "__init__" and not re.search(rf"(?<![\w/.]){re.escape(stem)}(\.py)?(?!\w)", entries[folder]):
            missing.append(str(relative))
    assert not missing, f"modules docs/architecture.md does not name (in its layout block): {sorted(set(missing))}"


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module in MODULES:
        for target, line in imports_of(module):
            if layer_of(target) > layer_of(module) and (module, target) not in ALLOWED_UPWARD:
                upward.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "imports of a higher layer (docs/architecture.md, Layers):\n" + "\n".join(upward)


def test_the_allow_list_is_still_needed() -> None:
    used = {(m, t) for m in MODULES for t, _ in imports_of(m)}
    assert not set(ALLOWED_UPWARD) - used, "ALLOWED_UPWARD lists imports that no longer exist: remove them"


def test_the_page_draws_the_same_layers() -> None:
    """The page's "Layers" list names, in order, the same layers as `LAYERS`."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    items = [line for line in section.splitlines() if re.match(r"^\d+\. ", line)]
    assert len(items) == len(LAYERS), f"the page lists {len(items)} layers, the test {len(LAYERS)}"
    for item, prefixes in zip(items, LAYERS, strict=True):
        for prefix in prefixes:
            shown = prefix.removeprefix("trl_conservative").lstrip(".").replace(".", "/") or "__init__"
            assert f"`{shown}" in item, f"layer {item!r} should name `{shown}`"


def test_imports_of_sees_lazy_imports_and_modules_imported_from_their_package() -> None:
    """The check reads what it must: an import inside a function, `from package import module`, a relative import
    and a name the root package re-exports."""
    found = {target for target, _ in imports_of("trl_conservative.trainer.trainer")}
    assert "trl_conservative.reliability.atomic" in found  # `from trl_conservative.reliability import atomic`, lazy
    assert "trl_conservative.trainer.trl_compat" in found  # `from .trl_compat import ...`
    assert "trl_conservative.reliability.callback_state" in found
    environment = {target for target, _ in imports_of("trl_conservative.environment")}
    assert "trl_conservative._version" in environment  # `from trl_conservative import __version__`


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("trl_conservative.trainer.trl_compat", 0),
        ("trl_conservative.trainer.trainer", 6),
        ("trl_conservative.run.files", 9),
    ],
)
def test_layer_of_takes_the_longest_prefix(module: str, expected: int) -> None:
    assert layer_of(module) == expected
