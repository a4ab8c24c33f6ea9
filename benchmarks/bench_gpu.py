"""GPU benchmark (CUDA, bf16): a ~1.2B-parameter Llama-3-shaped model (vocabulary 128,256, random init).

Measures, side by side in one process, stock `trl.DPOTrainer` against `ConservativeDPOTrainer`:
  - tokens/s and peak GPU memory (torch.cuda.max_memory_allocated) for sigmoid, with KL measures off and on,
    and for cdpo;
  - the exact KL's overhead (`kl_exact_steps=1` vs 0);
  - that the logged losses match stock TRL on CUDA (sigmoid, same seed).

One command, about 5-8 minutes on an H100 (model build + 4 configurations x 12 steps):

    python benchmarks/bench_gpu.py --write         # on a GPU machine; writes a section of benchmarks/RESULTS.md
    python benchmarks/bench_gpu.py --tiny          # CPU smoke test at tiny sizes (what CI can run)
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from results import machine_line, markdown_table, median, write_section  # noqa: E402

LLAMA3_1B = dict(
    hidden_size=2048,
    num_layers=16,
    num_heads=32,
    intermediate_size=8192,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=512)


def _rows(n: int, length: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return "".join(rng.choice(string.ascii_letters + " ") for _ in range(k))

    return [{"prompt": text(length // 4), "chosen": text(length), "rejected": text(length)} for _ in range(n)]


def build(path: Path, tiny: bool) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trl_conservative.demo.tiny import build_tokenizer

    size = TINY if tiny else LLAMA3_1B
    vocab = 4096 if tiny else 128_256
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=size["hidden_size"],
        intermediate_size=size["intermediate_size"],
        num_hidden_layers=size["num_layers"],
        num_attention_heads=size["num_heads"],
        num_key_value_heads=max(1, size["num_heads"] // 4),
        max_position_embeddings=size["max_position_embeddings"],
        tie_word_embeddings=size.get("tie_word_embeddings", False),
        rope_theta=500000.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32 if tiny else torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    print(f"built Llama-3-shaped model: {n_params / 1e9:.2f}B parameters, V={vocab}", flush=True)
    return path


def run_one(label: str, model_path: Path, spec: dict[str, Any], tiny: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer

    cuda = torch.cuda.is_available() and not tiny
    times: list[float] = []

    class Timer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    common: dict[str, Any] = dict(
        output_dir=str(model_path.parent / "out"),
        report_to="none",
        per_device_train_batch_size=spec["batch"],
        max_steps=spec["steps"],
        learning_rate=1e-6,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        gradient_checkpointing=not tiny,
        disable_tqdm=True,
        max_length=spec["length"] * 3,
        beta=0.1,
        loss_type=spec["loss"],
        label_smoothing=spec.get("eps", 0.0),
        bf16=not tiny,
        use_cpu=tiny,
    )
    if spec["trainer"] == "stock":
        trainer_cls, args = DPOTrainer, DPOConfig(**common)
    else:
        kl = dict(kl_exact_steps=1, kl_drift=True) if spec["kl"] else dict(kl_exact_steps=0, kl_drift=False)
        trainer_cls, args = ConservativeDPOTrainer, ConservativeDPOConfig(**common, **kl)
    data = Dataset.from_list(_rows(spec["batch"] * spec["steps"], spec["length"]))
    trainer = trainer_cls(model=str(model_path), args=args, train_dataset=data, callbacks=[Timer()])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    tokens = trainer.state.log_history[-2].get("num_tokens", 0.0)
    step_s = median(times[spec["warmup"] :])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {
        "label": label,
        "step_s": step_s,
        "tokens_per_s": tokens / max(sum(times), 1e-9),
        "peak_gb": peak_gb,
        "losses": losses,
    }
    print(
        f"{label:<22} step {step_s * 1000:8.1f} ms  peak {peak_gb:6.2f} GiB  loss[0..2] {losses[:3]}",
        flush=True,
    )
    del trainer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test at tiny sizes")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if not opts.tiny and not torch.cuda.is_available():
        sys.exit("No CUDA device: run this on a GPU machine, or pass --tiny for the CPU smoke test.")
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    model = build(tmp / "model", opts.tiny)
    base = dict(
        batch=2 if opts.tiny else 4,
        length=16 if opts.tiny else 512,
        steps=3 if opts.tiny else 12,
        warmup=1 if opts.tiny else 3,
    )
    configs = [
        ("stock sigmoid", dict(trainer="stock", loss="sigmoid", kl=False)),
        ("ours sigmoid", dict(trainer="ours", loss="sigmoid", kl=False)),
        ("ours sigmoid + KL", dict(trainer="ours", loss="sigmoid", kl=True)),
        ("ours cdpo eps=0.1", dict(trainer="ours", loss="cdpo", kl=False, eps=0.1)),
    ]
    results = {label: run_one(label, model, {**base, **extra}, opts.tiny) for label, extra in configs}
    stock = results["stock sigmoid"]
    rows = []
    for label, r in results.items():
        rows.append(
            [
                label,
                f"{r['tokens_per_s']:.0f}",
                f"{r['step_s'] / stock['step_s']:.3f}x",
                f"{r['peak_gb']:.2f}",
                f"{r['peak_gb'] / stock['peak_gb']:.3f}x" if stock["peak_gb"] == stock["peak_gb"] else "n/a",
            ]
        )
    gap = max(abs(a - b) for a, b in zip(results["ours sigmoid"]["losses"], stock["losses"], strict=True))
    kl_overhead = results["ours sigmoid + KL"]["step_s"] / results["ours sigmoid"]["step_s"]
    table = markdown_table(
        ["configuration", "tokens/s", "step time vs stock", "peak GiB", "memory vs stock"], rows
    )
    verdict = f"max |loss(ours sigmoid) - loss(stock sigmoid)| over {base['steps']} steps: {gap:.3g}"
    print(
        f"\n{table}\n\n{verdict}\nexact-KL overhead (kl_exact_steps=1 vs off): {kl_overhead:.3f}x\n"
        f"total wall time {time.perf_counter() - started:.0f} s"
    )
    if opts.write:
        write_section(
            "gpu" if not opts.tiny else "gpu-smoke",
            f"## 4. GPU (`benchmarks/bench_gpu.py`)\n\n{machine_line()}\n\n"
            f"Model: random Llama-3-shaped, V=128,256, {LLAMA3_1B if not opts.tiny else TINY}; bf16; "
            f"batch {base['batch']} pairs of ~{base['length']}-token completions; median of steps after "
            f"{base['warmup']} warm-up steps.\n\n{table}\n\n{verdict}. Exact-KL overhead at every step: "
            f"{kl_overhead:.3f}x.",
        )


if __name__ == "__main__":
    main()
