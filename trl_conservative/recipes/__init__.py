"""The shipped recipes and accelerate configs: the YAML files beside this module, installed with the package.

A recipe is named by its path here without `.yaml` (`llama31_8b_cdpo_lora`, `losses/cdpo`, `accelerate/multi_gpu`),
so it works from any installed wheel, with no checkout:

    trl-conservative run --config builtin:losses/cdpo
    accelerate launch --config_file "$(trl-conservative examples path accelerate/multi_gpu)" \\
        -m trl_conservative.cli run --config builtin:llama31_8b_cdpo_lora
    trl-conservative examples copy losses/cdpo --to my-runs/    # a copy to edit

These files are the only copy: the repository's `examples/` folder links to them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trl_conservative.errors import ConfigError

__all__ = ["BUILTIN_PREFIX", "RECIPES_DIR", "copy_recipes", "recipe_names", "recipe_path", "resolve_config"]

RECIPES_DIR = Path(__file__).resolve().parent
BUILTIN_PREFIX = "builtin:"
ACCELERATE = "accelerate"  # the subfolder of accelerate configs (for `accelerate launch`, not for `run`)


def recipe_names(*, accelerate: bool = True) -> list[str]:
    """Every shipped file's name (its path here without `.yaml`), sorted; without the accelerate configs when
    `accelerate` is False."""
    names = sorted(p.relative_to(RECIPES_DIR).with_suffix("").as_posix() for p in RECIPES_DIR.rglob("*.yaml"))
    return [n for n in names if accelerate or not n.startswith(f"{ACCELERATE}/")]


def recipe_path(name: str) -> Path:
    """The installed file of recipe `name` (`losses/cdpo`, `builtin:losses/cdpo` or `losses/cdpo.yaml`)."""
    stem = name.removeprefix(BUILTIN_PREFIX).removesuffix(".yaml")
    if stem in recipe_names():
        return RECIPES_DIR / f"{stem}.yaml"
    raise ConfigError(
        f"No shipped recipe is named {name!r}. Shipped: {', '.join(recipe_names())} "
        "(`trl-conservative examples` lists them)."
    )


def resolve_config(given: str) -> Path:
    """The file `run --config` reads: a shipped recipe for `builtin:NAME`, else the path as given."""
    if given.startswith(BUILTIN_PREFIX):
        name = given.removeprefix(BUILTIN_PREFIX)
        if name.startswith(f"{ACCELERATE}/"):
            raise ConfigError(
                f"{given!r} is an accelerate config, not a run config: pass it to `accelerate launch --config_file "
                f'"$(trl-conservative examples path {name})"`, and a recipe to --config '
                f"({', '.join(BUILTIN_PREFIX + n for n in recipe_names(accelerate=False))})."
            )
        return recipe_path(given)
    return Path(given)


def copy_recipes(names: list[str], to: Path) -> list[Path]:
    """Copy the named recipes (all of them when `names` is empty) into folder `to`, keeping their subfolders;
    refuses to overwrite a file. Returns the files written."""
    sources = (
        [recipe_path(n) for n in names] if names else [RECIPES_DIR / f"{n}.yaml" for n in recipe_names()]
    )
    targets = [to / src.relative_to(RECIPES_DIR) for src in sources]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise ConfigError(
            f"Not overwriting {', '.join(existing)}: move them away or copy into another --to folder."
        )
    for src, target in zip(sources, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return targets
