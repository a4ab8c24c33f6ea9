"""One training of the label-noise study, and what it needs: the task splits, the cached SFT reference, evaluation.

Imported by `bench_label_noise.py` in each worker process. Every worker rebuilds the same splits from the study's
settings (deterministic), loads the one cached SFT reference, and trains with `ConservativeDPOTrainer`, evaluating
the policy at the end of every epoch:

- `task`: greedy decoding on the clean test prompts, exact match (one 0/1 per prompt, kept for paired statistics);
- `rank`: clean test pairs whose policy log-likelihood ranks the right answer first, pi(y_w) > pi(y_l);
- `reward`: clean test pairs with implicit-reward margin beta*h > 0 (the trainer's `rewards/accuracies`);
- `val`: the same on the noisy validation pairs, as a user would measure it (used for model selection);
- `flip_fit` / `clean_fit`: training pairs, flipped / not, whose margin on the label as given is > 0;
- `ece`: calibration of sigma(beta*h) against the noisy validation labels (10 equal-width bins);
- `kl`: on-policy sequence KL(pi || pi_ref) on the test prompts (`trl_conservative.kl.sampled_sequence_kl`).
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

Row = dict[str, str]


@dataclass(frozen=True)
class Study:
    """The study's fixed settings (part of the reference's cache key)."""

    max_operand: int = 39  # operands 0..39: 1,600 prompts
    test_fraction: float = 0.25  # 400 clean test prompts, never seen in SFT or DPO
    val_prompts: int = 150  # noisy validation pairs for model selection, taken from the training prompts
    sft_steps: int = 450  # short SFT: the reference solves about half the prompts, so there is room to learn
    sft_lr: float = 3e-3
    hidden_size: int = 64
    epochs: int = 4
    learning_rate: float = 1e-4
    batch_size: int = 64
    max_new_tokens: int = 4  # answers have at most 2 digits + EOS

    @classmethod
    def quick(cls) -> Study:
        return cls(max_operand=12, test_fraction=0.3, val_prompts=16, sft_steps=200, epochs=1)

    def key(self, *, reference_only: bool = False) -> str:
        import hashlib
        import json

        fields = asdict(self)
        if reference_only:  # the DPO settings do not change the reference
            fields = {k: v for k, v in fields.items() if k in _REFERENCE_FIELDS}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


_REFERENCE_FIELDS = {"max_operand", "test_fraction", "val_prompts", "sft_steps", "sft_lr", "hidden_size"}


@dataclass
class Splits:
    sft: list[Row]
    train: list[Row]
    val: list[Row]
    test: list[Row]


def build_splits(study: Study, ref_answers: dict[str, str] | None = None) -> Splits:
    """SFT rows on every training prompt; one preference pair per prompt: the right sum against the reference's
    own greedy answer when that is wrong (the mistakes there are to fix), else a near miss (as `tasks.py`)."""
    from trl_conservative.demo.tasks import ArithmeticTask, is_correct, prompt_text

    task = ArithmeticTask(
        max_operand=study.max_operand, test_fraction=study.test_fraction, pairs_per_prompt=1
    )
    train_ops, test_ops = task.prompts()
    val_ops, dpo_ops = train_ops[: study.val_prompts], train_ops[study.val_prompts :]

    def pairs(ops: list[tuple[int, int]], seed: int) -> list[Row]:
        rows = task.preference_rows(ops, seed=seed)
        for row in rows:
            answer = (ref_answers or {}).get(row["prompt"], row["chosen"]).strip()
            if answer and not is_correct(row["prompt"], answer):
                row["rejected"] = answer
        return rows

    return Splits(
        sft=[{"prompt": prompt_text(a, b), "completion": str(a + b)} for a, b in train_ops],
        train=pairs(dpo_ops, 1),
        val=pairs(val_ops, 2),
        test=pairs(test_ops, 3),
    )


def noisy(rows: list[Row], rho: float, seed: int) -> tuple[list[Row], list[int]]:
    """The same flipped pairs for every loss within a seed."""
    from trl_conservative.demo.tasks import flip_labels

    return flip_labels(rows, rho, seed=seed)


def reference_path(study: Study, cache_dir: Path, *, log: Any = print) -> Path:
    """The SFT reference, trained once per study setting and reused from `cache_dir`."""
    import torch

    from trl_conservative.demo.embedded import sft_tensors
    from trl_conservative.demo.tiny import build_model, build_tokenizer

    target = cache_dir / f"label-noise-ref-{study.key(reference_only=True)}"
    if (target / "config.json").is_file():
        return target
    log(f"Training the SFT reference ({study.sft_steps} steps) into {target}")
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    h = study.hidden_size
    model = build_model(len(tokenizer), hidden_size=h, num_heads=4, intermediate_size=2 * h, seed=0)
    ids, labels = sft_tensors(build_splits(study).sft, tokenizer)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=study.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / study.sft_steps)
    model.train()
    for _ in range(study.sft_steps):
        idx = torch.randint(0, ids.size(0), (64,), generator=gen)
        model(
            input_ids=ids[idx], attention_mask=ids[idx] != tokenizer.pad_token_id, labels=labels[idx]
        ).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    tmp = Path(tempfile.mkdtemp(prefix=".ref-", dir=cache_dir))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    return target


# --- evaluation -------------------------------------------------------------------------------------------
class Evaluator:
    """Everything the study measures on a policy, with the reference's numbers computed once per process."""

    def __init__(self, study: Study, ref_path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.study = study
        self.tokenizer = AutoTokenizer.from_pretrained(ref_path)
        self.reference = AutoModelForCausalLM.from_pretrained(ref_path, dtype=torch.float32).eval()
        prompts = [r["prompt"] for r in build_splits(study).sft]
        prompts += [r["prompt"] for r in build_splits(study).test]
        answers = self.answers(self.reference, [self._ids(p) for p in prompts])
        self.splits = build_splits(study, dict(zip(prompts, answers, strict=True)))
        self.prompt_ids = [self._ids(r["prompt"]) for r in self.splits.test]
        # Clean-orientation log-likelihoods of (chosen, rejected) under the reference, per split.
        self.ref = {name: self.logps(self.reference, rows) for name, rows in self._pair_splits().items()}
        self.ref_task = self.greedy(self.reference)

    def _pair_splits(self) -> dict[str, list[Row]]:
        return {"train": self.splits.train, "val": self.splits.val, "test": self.splits.test}

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def logps(self, model: Any, rows: list[Row]) -> tuple[Any, Any]:
        """Sequence log-likelihood of chosen and rejected (completion tokens + EOS), as TRL sums them."""
        import torch

        seqs, starts = [], []
        for row in rows:
            prompt = self._ids(row["prompt"])
            for answer in (row["chosen"], row["rejected"]):
                seqs.append(prompt + self._ids(answer) + [self.tokenizer.eos_token_id])
                starts.append(len(prompt))
        width = max(map(len, seqs))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        lengths = torch.tensor([len(s) for s in seqs])
        pos = torch.arange(width)[None, :]
        # label positions: completion tokens t in [start, len)
        mask = (pos >= torch.tensor(starts)[:, None]) & (pos < lengths[:, None])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=(pos < lengths[:, None]).long()).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        total = (logp * mask[:, 1:]).sum(-1).double()
        return total[0::2], total[1::2]

    def greedy(self, model: Any) -> str:
        """Exact-match correctness of greedy answers on the clean test prompts, one '0'/'1' per prompt."""
        from trl_conservative.demo.tasks import is_correct

        answers = self.answers(model, self.prompt_ids)
        return "".join(
            "1" if is_correct(r["prompt"], a) else "0" for r, a in zip(self.splits.test, answers, strict=True)
        )

    def train_task(self, model: Any) -> float:
        """Greedy exact-match accuracy on the DPO training prompts."""
        from trl_conservative.demo.tasks import is_correct

        rows = self.splits.train
        answers = self.answers(model, [self._ids(r["prompt"]) for r in rows])
        return sum(is_correct(r["prompt"], a) for r, a in zip(rows, answers, strict=True)) / len(rows)

    def answers(self, model: Any, ids: list[list[int]]) -> list[str]:
        """Greedy answers (left-padded batch)."""
        import torch

        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        inp = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
        with torch.no_grad():
            out = model.generate(
                input_ids=inp,
                attention_mask=(inp != pad).long(),
                max_new_tokens=self.study.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        return list(self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))

    def evaluate(
        self,
        model: Any,
        *,
        beta: float,
        flipped_train: list[int],
        flipped_val: list[int],
        seed: int,
        scores: bool,
    ) -> dict[str, Any]:
        import torch

        was_training = model.training
        model.eval()
        started = time.perf_counter()
        out: dict[str, Any] = {"task_items": self.greedy(model)}
        out["task"] = out["task_items"].count("1") / len(out["task_items"])
        out["task_train"] = self.train_task(model)
        h: dict[str, Any] = {}
        policy: dict[str, Any] = {}
        for name, rows in self._pair_splits().items():
            pc, pr = self.logps(model, rows)
            rc, rr = self.ref[name]
            h[name] = (pc - rc) - (pr - rr)  # clean orientation: > 0 means the right answer gained
            policy[name] = pc - pr
        out["rank"] = float((policy["test"] > 0).double().mean())
        out["reward"] = float((h["test"] > 0).double().mean())
        out["p_test"] = float(torch.sigmoid(beta * h["test"]).mean())
        # The labels as given: a flipped pair's margin is the clean one negated.
        h_val = _orient(h["val"], flipped_val)
        out["val"] = float((h_val > 0).double().mean())
        # Calibration of sigma(beta h) as P(label prefers the first answer), each pair shown in a fixed random
        # order (with every pair in label order the observed frequency would be 1 by construction).
        order = random.Random(seed).choices([1.0, -1.0], k=len(h_val))
        sign = torch.tensor(order, dtype=h_val.dtype)
        out["ece"] = expected_calibration_error(
            torch.sigmoid(beta * h_val * sign).tolist(), [(1.0 + o) / 2 for o in order]
        )
        h_train = _orient(h["train"], flipped_train)
        is_flipped = torch.zeros(len(h_train), dtype=torch.bool)
        is_flipped[flipped_train] = True
        out["flip_fit"] = float((h_train[is_flipped] > 0).double().mean()) if flipped_train else math.nan
        out["clean_fit"] = float((h_train[~is_flipped] > 0).double().mean())
        out["kl"], out["kl_se"] = self.sequence_kl(model, seed)
        if scores:  # per training pair, labels as given: the candidate suspected-flip scores
            out["score_margin"] = [round(float(x), 4) for x in beta * h_train]
            out["score_policy"] = [round(float(x), 4) for x in _orient(policy["train"], flipped_train)]
        out["eval_s"] = time.perf_counter() - started
        if was_training:
            model.train()
        return out

    def sequence_kl(self, model: Any, seed: int) -> tuple[float, float]:
        try:
            from trl_conservative.kl import sampled_sequence_kl
        except ImportError:  # an older checkout: train with --save-weights, then run --kl
            return math.nan, math.nan
        result = sampled_sequence_kl(
            model,
            self.reference,
            self.prompt_ids,
            max_new_tokens=self.study.max_new_tokens,
            seed=seed,
            batch_size=len(self.prompt_ids),
        )
        return float(result.mean), float(result.stderr)


def _orient(h: Any, flipped: list[int]) -> Any:
    out = h.clone()
    if flipped:
        out[flipped] = -out[flipped]
    return out


def expected_calibration_error(probs: list[float], labels: list[float], bins: int = 10) -> float:
    """Share-weighted mean |mean predicted - observed| over equal-width probability bins."""
    total, n = 0.0, len(probs)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, p in enumerate(probs) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if idx:
            total += (
                len(idx)
                / n
                * abs(sum(probs[i] for i in idx) / len(idx) - sum(labels[i] for i in idx) / len(idx))
            )
    return total


@cache
def _evaluator(study: Study, ref_path: str) -> Evaluator:
    return Evaluator(study, ref_path)


# --- one training -----------------------------------------------------------------------------------------
def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (loss, eps, beta, rho, seed) and evaluate it every epoch; returns the job plus its results."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(1)
    import datasets
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    study = Study(**job["study"])
    ev = _evaluator(study, job["ref_path"])
    rho, seed, beta = job["rho"], job["seed"], job["beta"]
    train_rows, flipped = noisy(ev.splits.train, rho, seed)
    _, flipped_val = noisy(ev.splits.val, rho, seed + 10_000)
    epochs: list[dict[str, Any]] = []

    weights = job.get("weights_dir")

    class EpochEval(TrainerCallback):  # type: ignore[misc]
        def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            last = len(epochs) + 1 == study.epochs
            if weights:  # for a later KL pass (when sampled_sequence_kl was not available at training time)
                Path(weights).mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), Path(weights) / f"epoch{len(epochs) + 1}.pt")
            epochs.append(
                ev.evaluate(
                    model,
                    beta=beta,
                    flipped_train=flipped,
                    flipped_val=flipped_val,
                    seed=seed,
                    scores=last and job.get("scores", False),
                )
            )

    with tempfile.TemporaryDirectory(prefix="bench-noise-") as out:
        args = ConservativeDPOConfig(
            output_dir=out,
            use_cpu=True,
            report_to="none",
            per_device_train_batch_size=study.batch_size,
            num_train_epochs=study.epochs,
            learning_rate=study.learning_rate,
            lr_scheduler_type="constant",
            beta=beta,
            loss_type=job["loss"],
            label_smoothing=job["eps"],
            logging_steps=10**6,
            save_strategy="no",
            eval_strategy="no",
            seed=seed,
            data_seed=seed,
            disable_tqdm=True,
            bf16=False,
            max_length=16,
            kl_exact_steps=0,
            kl_drift=False,
        )
        started = time.perf_counter()
        trainer = ConservativeDPOTrainer(
            model=job["ref_path"],
            args=args,
            train_dataset=datasets.Dataset.from_list(train_rows),
            callbacks=[EpochEval()],
        )
        trainer.train()
        wall = time.perf_counter() - started
    return {**job, "epochs": epochs, "ref_task": ev.ref_task, "wall_s": wall, "pid": os.getpid()}


def kl_job(job: dict[str, Any]) -> dict[str, Any]:
    """The KL pass: on-policy sequence KL of saved per-epoch weights (runs trained before the KL function existed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    study = Study(**job["study"])
    ev = _evaluator(study, job["ref_path"])
    model = AutoModelForCausalLM.from_pretrained(job["ref_path"], dtype=torch.float32).eval()
    out = []
    for epoch, path in job["weights"]:
        model.load_state_dict(torch.load(path, weights_only=True))
        mean, stderr = ev.sequence_kl(model, job["seed"])
        out.append({"key": job["key"], "epoch": epoch, "kl": mean, "kl_se": stderr})
    return {"key": job["key"], "rows": out}
