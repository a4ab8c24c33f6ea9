"""What KL monitoring costs: training step time with the KL measures on vs off, and the exact KL's peak memory.

1. Step time. `ConservativeDPOTrainer` (sigmoid loss) on a small random Llama-shaped model (V = 32,000), in
   paired rounds: every configuration trains once per round, in rotating order, in this process, on one
   thread, timed in process CPU time (robust to other load on a shared machine). A run's step time is its
   mean over the steps after warm-up (a mean, not a median, so the occasional `kl/exact` step counts); the
   ratio to "KL off" is taken per round, and the median ratio over rounds is reported.
3. The sampled sequence KL at evaluation (`--only sequence`): CPU time of one `sampled_sequence_kl` call (one
   thread) on the same model, for 8 and 32 prompts x 32 and 128 new tokens, against one DPO evaluation pass over
   32 pairs without it. The random model almost never samples its end-of-sequence token, so every completion
   runs to max_new_tokens: the worst case.
2. Peak memory of `exact_token_kl_chunked` at three chunk sizes (128, the default 256, 512) and two vocabulary
   sizes (32,000 and 128,256, hidden size 64), each in a fresh subprocess: we reset the process's peak
   resident set size (`/proc/self/clear_refs`, Linux), call the function once and report peak RSS minus the
   RSS just before (inputs already allocated), with glibc's mmap threshold fixed at 1 MiB so freed blocks go
   back to the OS. Where that reset is unavailable the peak of `ru_maxrss` is used instead. The naive
   computation (full `[tokens, V]` logits of both models, log-softmax, `kl_div`) is measured alike. Timings
   here are process CPU time on one thread.

    python benchmarks/bench_kl.py              # full: ~15 min on 2 CPU cores
    python benchmarks/bench_kl.py --quick      # smoke test: tiny sizes, one round (~30 s)
    python benchmarks/bench_kl.py --write      # also write the tables into benchmarks/RESULTS.md
    python benchmarks/bench_kl.py --only memory --write   # one of the measurements (memory: ~3 min)
    python benchmarks/bench_kl.py --only sequence --write # the sampled sequence KL (~3 min)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from results import machine_line, markdown_table, median, write_section  # noqa: E402

# label -> KL settings
CONFIGS: dict[str, dict[str, Any]] = {
    "KL off": dict(kl_exact_steps=0, kl_drift=False),
    "log-ratio signals only": dict(kl_exact_steps=0, kl_drift=True),
    "defaults (drift + exact every {default} steps)": dict(),
    "drift + exact every step": dict(kl_exact_steps=1, kl_drift=True),
}


def _rows(n: int, length: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(k))

    return [{"prompt": text(length // 2), "chosen": text(length), "rejected": text(length)} for _ in range(n)]


# --- 1. step time --------------------------------------------------------------------------------------------
def time_run(model: Path, out: Path, kl: dict[str, Any], size: dict[str, int]) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer

    times: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0 = time.process_time()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.process_time() - self.t0)

    steps = size["warmup"] + size["steps"]
    args = ConservativeDPOConfig(
        output_dir=str(out),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=size["batch"],
        max_steps=steps,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        gradient_checkpointing=False,
        disable_tqdm=True,
        max_length=size["length"] * 2,
        loss_type="sigmoid",
        **kl,
    )
    data = Dataset.from_list(_rows(size["batch"] * steps, size["length"]))
    trainer = ConservativeDPOTrainer(str(model), args=args, train_dataset=data, callbacks=[StepTimer()])
    trainer.remove_callback(PrinterCallback)  # keep the output to our lines
    trainer.train()
    timed = times[size["warmup"] :]
    return sum(timed) / len(timed)


def step_time_table(quick: bool, rounds: int) -> str:
    import torch

    from trl_conservative.kl.settings import KL_EXACT_STEPS_DEFAULT

    # One thread and CPU time, not wall time: the ratio then does not depend on what else the machine runs.
    torch.set_num_threads(1)
    from trl_conservative.demo.tiny import save_tiny_model

    vocab = 2048 if quick else 32_000
    shape = (
        dict(hidden_size=32, num_layers=2, intermediate_size=64)
        if quick
        else dict(hidden_size=256, num_layers=4, intermediate_size=688)
    )
    # kl_exact_steps (10) timed steps: the default run times exactly one exact-KL step out of 10.
    size = dict(batch=4, length=16 if quick else 48, warmup=1 if quick else 2, steps=3 if quick else 10)
    tmp = Path(tempfile.mkdtemp(prefix="bench-kl-"))
    model = save_tiny_model(tmp / "model", vocab_size=vocab, max_position_embeddings=512, **shape)
    print(
        f"step time: Llama-shaped V={vocab}, {shape}; {size['batch']} pairs x ~{size['length']} completion "
        f"tokens; {size['steps']} timed steps after {size['warmup']} warm-up; {rounds} paired round(s)",
        flush=True,
    )
    labels = list(CONFIGS)
    per_round: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            per_round[label].append(time_run(model, tmp / "out", CONFIGS[label], size))
            print(f"  round {r + 1}: {label:<48} {per_round[label][-1] * 1000:8.1f} CPU ms/step", flush=True)
    rows = []
    for label in labels:
        ratio = median([t / off for t, off in zip(per_round[label], per_round["KL off"], strict=True)])
        name = label.format(default=KL_EXACT_STEPS_DEFAULT)
        rows.append([name, f"{median(per_round[label]) * 1000:.1f}", f"{ratio:.3f}x"])
    table = markdown_table(["KL measures", "CPU ms/step (median of rounds)", "step time vs KL off"], rows)
    return table


# --- 3. the sampled sequence KL at evaluation -------------------------------------------------------------------
def sequence_table(quick: bool) -> str:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer
    from trl_conservative.demo.tiny import save_tiny_model
    from trl_conservative.kl import sampled_sequence_kl

    torch.set_num_threads(1)
    vocab = 2048 if quick else 32_000
    shape = (
        dict(hidden_size=32, num_layers=2, intermediate_size=64)
        if quick
        else dict(hidden_size=256, num_layers=4, intermediate_size=688)
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-seqkl-"))
    path = save_tiny_model(tmp / "model", vocab_size=vocab, max_position_embeddings=512, **shape)
    policy = AutoModelForCausalLM.from_pretrained(path).eval()
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():  # a policy that differs from its reference
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    rows_data = _rows(32, 48)
    args = ConservativeDPOConfig(
        output_dir=str(tmp / "out"), use_cpu=True, report_to="none", per_device_eval_batch_size=8, max_length=96,
        kl_sequence_prompts=0, disable_tqdm=True, bf16=False,
    )  # fmt: skip
    trainer = ConservativeDPOTrainer(
        str(path), ref_model=reference, args=args, train_dataset=Dataset.from_list(rows_data[:8]),
        eval_dataset=Dataset.from_list(rows_data),
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.evaluate()  # warm-up
    start = time.process_time()
    trainer.evaluate()
    eval_s = time.process_time() - start
    prompts = [list(p) for p in trainer.eval_dataset[trainer.PROMPT_COLUMN]]
    print(
        f"sampled sequence KL: V={vocab}, {shape}; a DPO evaluation of 32 pairs takes {eval_s:.2f} CPU s",
        flush=True,
    )
    grid = ((4, 8), (8, 16)) if quick else ((8, 32), (8, 128), (32, 32), (32, 128))
    sampled_sequence_kl(policy, reference, prompts[:2], max_new_tokens=4)  # warm-up
    table = []
    for n, length in grid:
        start = time.process_time()
        result = sampled_sequence_kl(policy, reference, prompts[:n], max_new_tokens=length, batch_size=8)
        seconds = time.process_time() - start
        print(
            f"  {n:>3} prompts x {length:>4} tokens: {seconds:7.2f} CPU s ({seconds / eval_s:5.1f}x the evaluation), "
            f"KL {result.mean:.3f} +/- {result.stderr:.3f} nats, truncated {result.truncated:.2f}",
            flush=True,
        )
        table.append(
            [
                str(n),
                str(length),
                f"{seconds:.2f}",
                f"{seconds / eval_s:.1f}x",
                f"{1000 * seconds / (n * result.mean_length):.2f}",
                f"{result.mean:.3f} +/- {result.stderr:.3f}",
                f"{result.truncated:.2f}",
            ]
        )
    return markdown_table(
        [
            "prompts",
            "max new tokens",
            "CPU s",
            "vs DPO eval of 32 pairs",
            "CPU ms per sampled token",
            "KL (nats/seq)",
            "truncated",
        ],
        table,
    )


# --- 2. peak memory of the exact KL ----------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_worker(spec: dict[str, Any]) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from trl_conservative.kl import exact_token_kl_chunked

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    tokens, hidden, vocab = spec["tokens"], spec["hidden"], spec["vocab"]
    hp, hq = torch.randn(1, tokens, hidden, generator=g), torch.randn(1, tokens, hidden, generator=g)
    wp, wq = torch.randn(vocab, hidden, generator=g) * 0.1, torch.randn(vocab, hidden, generator=g) * 0.1
    mask = torch.ones(1, tokens, dtype=torch.bool)

    def run(n: int) -> float:
        if spec["chunk"] == 0:  # naive: full logits of both models, log-softmax, kl_div (KL(p || q))
            logp, logq = F.log_softmax(hp[0, :n] @ wp.T, -1), F.log_softmax(hq[0, :n] @ wq.T, -1)
            return float(F.kl_div(logq, logp, log_target=True, reduction="none").sum())
        out = exact_token_kl_chunked(
            hp[:, :n], hq[:, :n], mask[:, :n], policy_weight=wp, ref_weight=wq, chunk_size=spec["chunk"]
        )
        return float(out.sum())

    run(2)  # warm-up on 2 tokens: kernel and allocator set-up is not what we measure

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before, method = _rss_kib("VmRSS"), "VmHWM"
    except OSError:
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    start = time.process_time()
    value = run(tokens)
    seconds = time.process_time() - start
    peak = _rss_kib("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": max(peak - before, 0) / 1024, "seconds": seconds, "kl_mean": value / tokens}


def memory_table(quick: bool) -> str:
    from trl_conservative.kl.settings import KL_CHUNK_SIZE_DEFAULT

    tokens, hidden = (128, 16) if quick else (1024, 64)
    vocabs = (1000, 4000) if quick else (32_000, 128_256)
    chunks = (16, 64) if quick else (128, KL_CHUNK_SIZE_DEFAULT, 512)
    print(f"exact KL memory: {tokens} completion tokens, hidden size {hidden}, float32", flush=True)
    rows = []
    for vocab in vocabs:
        for chunk in (*chunks, 0):
            spec = dict(tokens=tokens, hidden=hidden, vocab=vocab, chunk=chunk)
            # A fixed mmap threshold turns off glibc's dynamic one, which otherwise keeps freed blocks under
            # 32 MiB in the heap and inflates the RSS peak of small chunks by about a block.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
            proc = subprocess.run(
                [sys.executable, __file__, "--memory-worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
            model = 3 * (chunk or tokens) * vocab * 4 / 2**20
            name = f"chunk {chunk}" if chunk else "naive full logits"
            print(
                f"  V={vocab:<7} {name:<18} peak +{result['peak_mib']:8.1f} MiB (3 x chunk x V x 4 B = "
                f"{model:7.1f} MiB)  {result['seconds'] * 1000:8.1f} ms  KL/token {result['kl_mean']:.6f}",
                flush=True,
            )
            rows.append(
                [
                    f"{vocab:,}",
                    name,
                    f"{result['peak_mib']:.1f}",
                    f"{model:.1f}",
                    f"{result['seconds'] * 1000:.0f}",
                    f"{result['kl_mean']:.6f}",
                ]
            )
    return markdown_table(
        ["V", "exact KL", "peak extra MiB", "3 x chunk x V x 4 B (MiB)", "CPU ms (1 thread)", "KL per token"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke test)")
    parser.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--only", choices=("time", "memory", "sequence"), help="run one of the measurements")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if opts.memory_worker:
        print("RESULT " + json.dumps(memory_worker(json.loads(opts.memory_worker))), flush=True)
        return
    print(machine_line(), flush=True)
    if opts.only in (None, "sequence"):
        seq = sequence_table(opts.quick)
        print("\n" + seq + "\n", flush=True)
        if opts.write:
            write_section(
                "kl-sequence",
                "## KL monitoring: the sampled sequence KL at evaluation (`benchmarks/bench_kl.py --only sequence`)"
                f"\n\n{machine_line()}\n\n"
                "CPU time (one thread) of one `sampled_sequence_kl` call, policy and reference decoding in lockstep "
                "with KV caches, on a Llama-shaped model (V = 32,000, hidden 256, 4 layers), against one DPO "
                "evaluation pass over 32 pairs of ~48-token completions. Every completion ran to max_new_tokens "
                "(a random model rarely samples its end token): the worst case. The cost is linear in prompts x "
                "tokens: about two incremental decoding steps (policy and reference) per sampled token.\n\n"
                f"{seq}\n",
            )
    if opts.only in (None, "memory"):
        mem = memory_table(opts.quick)
        print("\n" + mem + "\n", flush=True)
        if opts.write:
            write_section(
                "kl-memory",
                "## KL monitoring: exact-KL peak memory (`benchmarks/bench_kl.py --only memory`)\n\n"
                f"{machine_line()}\n\n"
                "Extra peak memory of one exact-KL computation over 1,024 completion tokens (hidden size 64, "
                "float32): peak RSS minus RSS just before, a fresh process each. The chunked values match "
                "3 x chunk x V x 4 bytes; the naive computation holds five `[tokens, V]` blocks.\n\n"
                f"{mem}\n",
            )
    if opts.only in (None, "time"):
        steps = step_time_table(opts.quick, opts.rounds or (1 if opts.quick else 3))
        print("\n" + steps + "\n", flush=True)
        if opts.write:
            write_section(
                "kl-time",
                "## KL monitoring: step time (`benchmarks/bench_kl.py --only time`)\n\n"
                f"{machine_line()}\n\n"
                "`ConservativeDPOTrainer` (sigmoid), Llama-shaped V = 32,000, hidden 256, 4 layers, 4 pairs of "
                "~48-token completions; one thread, process CPU time; paired rounds, mean step time per run over "
                "10 steps after 2 warm-up, median ratio to KL off over 3 rounds:\n\n"
                f"{steps}\n",
            )
    if opts.write:
        written = {"sequence": "kl-sequence", "memory": "kl-memory", "time": "kl-time"}
        names = [written[opts.only]] if opts.only else list(written.values())
        print(f"wrote the {', '.join(names)} section(s) of benchmarks/RESULTS.md", flush=True)


if __name__ == "__main__":
    main()
