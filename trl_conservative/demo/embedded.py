"""The embedded default run: a tiny model taught the arithmetic task by SFT, and the shipped preference data.

`trl-conservative run` with no config reads `data/default.yaml`, whose model and dataset are the names below:
  - ``builtin:tiny-arithmetic``: a tiny Llama with the character-level tokenizer of `trl_conservative.demo.tiny`,
    trained by a short supervised loop on the task's SFT split, so the DPO reference already knows the task.
    Built once and reused from the cache (`$TRL_CONSERVATIVE_CACHE`, default ``~/.cache/trl-conservative``).
  - ``builtin:arithmetic``: the task's shipped `train`/`test` preference splits (see `trl_conservative.demo.tasks`).
Any config may use these names, e.g. the small per-loss examples.

The cache (`build_in_cache`, shared with `trl_conservative.demo.pretrained`) is built in a hidden `.building-*`
sibling renamed into place, so nothing half-built is ever used; a cached folder is used only when each required
file is there and reads (JSON files parse, every `.safetensors` file's header matches its size), else it is rebuilt
in its place. SIGINT or SIGTERM during a build removes the half-built folder and stops with one line
(`TrainingInterrupted`, exit 130/143). A cache path that is not a usable folder is one `ConfigError` naming
`$TRL_CONSERVATIVE_CACHE`. Built files get the modes a plain `open()`/`mkdir` gives under the umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trl_conservative.errors import ConfigError, TrainingInterrupted

from .tasks import DATA_DIR, SFT_FILE, TEST_FILE, TRAIN_FILE, read_jsonl

__all__ = [
    "sft_tensors",
    "BUILTIN_DATASET",
    "BUILTIN_MODEL",
    "CACHE_ENV",
    "DEFAULT_CONFIG",
    "REQUIRED_FILES",
    "WarmupRecipe",
    "builtin_dataset_files",
    "build_in_cache",
    "builtin_model_path",
    "cache_dir",
    "cache_problem",
    "saved_format",
    "warm_up",
]

BUILTIN_MODEL = "builtin:tiny-arithmetic"
BUILTIN_DATASET = "builtin:arithmetic"
DEFAULT_CONFIG = DATA_DIR / "default.yaml"
CACHE_ENV = "TRL_CONSERVATIVE_CACHE"
# What a usable cached tiny model holds (save_pretrained writes them on transformers 4 and 5).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True, kw_only=True)
class WarmupRecipe:
    """The tiny model's size and the SFT loop that teaches it the task. Part of the cache key."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        sft = (DATA_DIR / SFT_FILE).read_bytes()
        blob = json.dumps(asdict(self), sort_keys=True).encode() + sft
        return hashlib.sha256(blob).hexdigest()[:12]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "trl-conservative")


def builtin_dataset_files() -> dict[str, str]:
    """Split name -> path of the shipped preference JSONL files."""
    return {"train": str(DATA_DIR / TRAIN_FILE), "test": str(DATA_DIR / TEST_FILE)}


def saved_format() -> str:
    """A suffix for folders saved by transformers 4 (TRL 0.2x): transformers 5 saves its tokenizer as
    `TokenizersBackend`, which transformers 4 cannot load, so each keeps its own copy in a shared cache."""
    import transformers

    return "-transformers4" if int(transformers.__version__.split(".")[0]) < 5 else ""


def builtin_model_path(recipe: WarmupRecipe | None = None, *, log: Any = None) -> Path:
    """Path of the SFT-warmed tiny model, building it into the cache first if it is not there."""
    recipe = recipe or WarmupRecipe()
    target = cache_dir() / f"tiny-arithmetic-{recipe.key()}{saved_format()}"

    def build(folder: Path) -> None:
        if log is not None:
            log(
                f"Building the tiny model and teaching it the task by SFT ({recipe.steps} steps) into {target}"
            )
        model, tokenizer, _ = warm_up(recipe)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_in_cache(target, build, required=REQUIRED_FILES, log=log)


def build_in_cache(
    target: Path,
    build: Callable[[Path], None],
    *,
    required: Sequence[str],
    log: Callable[[str], None] | None = None,
) -> Path:
    """`target`, first built by `build(folder)` unless it holds every `required` file, each readable
    (`cache_problem`); a damaged copy is rebuilt, saying why through `log`.

    `build` writes into a temporary sibling that is then renamed, so concurrent runs (or an interrupted one) never
    see half a model. SIGINT/SIGTERM during the build removes that sibling and raises `TrainingInterrupted`.
    """
    problem = cache_problem(target, required)
    if problem is None:
        return target
    if target.exists() and log is not None:
        log(f"The cached model {str(target)!r} is damaged ({problem}): building it again.")
    _make_cache_root(target.parent)
    with _signals_stop(f"building {str(target)!r}"):
        tmp: Path | None = None
        try:
            try:
                tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
            except OSError as exc:
                raise ConfigError(
                    _cache_message(target.parent, f"is not writable ({exc.strerror})")
                ) from None
            build(tmp)
            _umask_modes(tmp)
            _replace(target, tmp, required)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace(target: Path, tmp: Path, required: Sequence[str]) -> None:
    """Rename the built `tmp` to `target`, setting a damaged `target` aside (and removing it) first."""
    if target.exists() and cache_problem(target, required) is not None:  # set aside, then removed
        stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=target.parent))
        try:
            target.rename(stale / target.name)
        except OSError:  # another process moved it first
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        if cache_problem(target, required) is not None:
            raise


def cache_problem(folder: Path, required: Sequence[str]) -> str | None:
    """Why `folder` is not a usable cached model: a `required` file missing, a JSON file that does not parse, a
    `.safetensors` file cut off or corrupt (judged from its header, without loading it); None when usable."""
    from trl_conservative.file_checks import safetensors_problem

    if not folder.is_dir():
        return "it is not a folder" if folder.exists() else "it is missing"
    for name in required:
        if not (folder / name).is_file():
            return f"{name} is missing"
    try:
        for path in sorted(folder.glob("*.json")):
            json.loads(path.read_bytes())
    except ValueError:
        return f"{path.name} is not valid JSON"
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or exc})"
    for path in sorted(folder.glob("*.safetensors")):
        try:
            problem = safetensors_problem(path)
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        if problem is not None:
            return f"{path.name} {problem}"
    return None


def _make_cache_root(root: Path) -> None:
    """Create the cache folder, or a `ConfigError` naming it (and `$TRL_CONSERVATIVE_CACHE`) when it cannot be."""
    if root.exists() and not root.is_dir():
        raise ConfigError(_cache_message(root, "is a file, not a folder"))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(_cache_message(root, f"cannot be created ({exc.strerror or exc})")) from None


def _cache_message(root: Path, problem: str) -> str:
    if root == cache_dir() and os.environ.get(CACHE_ENV):
        return (
            f"{CACHE_ENV}={os.environ[CACHE_ENV]!r} names a model cache that {problem}. Set {CACHE_ENV} to a folder "
            "you can write to, or unset it to use ~/.cache/trl-conservative."
        )
    return f"The model cache {str(root)!r} {problem}. Set {CACHE_ENV} to a folder you can write to, or fix that path."


@contextlib.contextmanager
def _signals_stop(doing: str) -> Iterator[None]:
    """While building: SIGINT or SIGTERM raises `TrainingInterrupted` (once; later ones are ignored until the
    half-built folder is removed), so the caller's cleanup runs; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)

    def stop(number: int, _frame: Any) -> None:
        for s in signals:
            signal.signal(s, signal.SIG_IGN)  # the cleanup is not cut short by a second signal
        raise TrainingInterrupted(
            f"{signal.Signals(number).name} while {doing}: stopped, and the half-built copy was removed, so the "
            "cache holds no partial model. Run the command again to build it.",
            signal_number=number,
            step=0,
            checkpoint=None,
        )

    previous = {s: signal.signal(s, stop) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _umask_modes(folder: Path) -> None:
    """The modes a plain `open()`/`mkdir` gives under the umask (`mkdtemp` makes 0700; safetensors writes 0600), so
    a cache shared on a cluster is readable as its umask allows."""
    from trl_conservative.reliability.atomic import default_dir_mode, default_file_mode

    file_mode, dir_mode = default_file_mode(), default_dir_mode()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, dir_mode if path.is_dir() else file_mode)


def warm_up(recipe: WarmupRecipe) -> tuple[Any, Any, list[float]]:
    """Train a fresh tiny model on the SFT split (loss on the answer tokens); returns model, tokenizer, losses."""
    import torch

    from .tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(
        len(tokenizer),
        hidden_size=recipe.hidden_size,
        num_layers=recipe.num_layers,
        num_heads=recipe.num_heads,
        intermediate_size=recipe.intermediate_size,
        seed=recipe.seed,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast alone and ~2x faster on a busy machine
    try:
        return _train(model, tokenizer, recipe)
    finally:
        torch.set_num_threads(threads)


def _train(model: Any, tokenizer: Any, recipe: WarmupRecipe) -> tuple[Any, Any, list[float]]:
    import torch

    rows = read_jsonl(DATA_DIR / SFT_FILE)
    input_ids, labels = sft_tensors(rows, tokenizer)
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / recipe.steps)
    losses = []
    model.train()
    for _ in range(recipe.steps):
        idx = torch.randint(0, input_ids.size(0), (recipe.batch_size,), generator=generator)
        out = model(
            input_ids=input_ids[idx],
            attention_mask=(input_ids[idx] != tokenizer.pad_token_id),
            labels=labels[idx],
        )
        out.loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(out.loss.detach().item())
    model.eval()
    return model, tokenizer, losses


def sft_tensors(rows: list[dict[str, str]], tokenizer: Any) -> tuple[Any, Any]:
    """Right-padded SFT `input_ids` and `labels` (-100 outside the completion plus its end token) for `rows`."""
    import torch

    seqs, masks = [], []
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        seqs.append(prompt + answer)
        masks.append([0] * len(prompt) + [1] * len(answer))
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    completion = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    return input_ids, input_ids.masked_fill(completion == 0, -100)
