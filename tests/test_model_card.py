"""The model card: the pure builder over handmade `CardData`, and the card a tiny real run writes."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import math
import os
import re
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from trl_conservative import ConservativeDPOConfig, LossInputs, LossOutput, LossParam, hookimpl
from trl_conservative.losses.ipo import IPO_CITATION
from trl_conservative.losses.plan import resolve_losses
from trl_conservative.losses.sigmoid import CDPO_CITATION, DPO_CITATION, conservative_sigmoid_loss
from trl_conservative.model_card import (
    METRICS,
    CardData,
    CardLoss,
    CardMetric,
    PeftSettings,
    build_model_card,
    card_losses,
    cdpo_margin_target,
    final_metrics,
    is_hub_dataset_id,
    precision_label,
    render_model_card,
)
from trl_conservative.registry import registered_plugins
from trl_conservative.report.formatting import fmt_number

KL_KEYS = ("kl/sequence", "kl/exact", "kl/exact_chosen", "kl/exact_rejected", "logratio/chosen", "logratio/rejected")
PLUGIN_CITATION = "@misc{card2026plugin,\n    title = {{A plugin loss}},\n    year = 2026\n}"


def _data(**overrides: Any) -> CardData:
    values: dict[str, Any] = dict(
        model_name="cdpo-tiny",
        model_location="/runs/cdpo-tiny",
        base_model="org/base-model",
        dataset_name="org/prefs",
        train_size=1000,
        eval_size=100,
        losses=(
            CardLoss(
                name="cdpo",
                source="trl-conservative (built-in)",
                version="0.1.0",
                citation=CDPO_CITATION,
                summary="Conservative DPO (Mitchell, 2023).",
            ),
        ),
        beta=0.25,
        label_smoothing=0.1,
        learning_rate=5e-7,
        num_train_epochs=2.0,
        max_steps=-1,
        global_step=42,
        epoch=2.0,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=8,
        world_size=2,
        precision="bf16 mixed precision (fp32 weights)",
        seed=7,
        versions=(("TRL", "1.16.0"), ("PEFT", "0.21.2"), ("trl-conservative", "0.1.0")),
        train_metrics={
            "loss": CardMetric(value=0.5123, step=42),
            "rewards/accuracies": CardMetric(value=0.75, step=42),
            "rewards/margins": CardMetric(value=1.234567, step=42),
        },
        eval_metrics={"rewards/accuracies": CardMetric(value=0.625, step=40)},
    )
    values.update(overrides)
    return CardData(**values)


def _front_matter(text: str) -> dict[str, Any]:
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, text[:200]
    loaded = yaml.safe_load(match.group(1))
    assert isinstance(loaded, dict)
    return loaded


def _snippet(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    return str(blocks[0])


def _table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is `first_cell` (split on unescaped pipes)."""
    for line in text.splitlines():
        if line.startswith(f"| {first_cell} |"):
            cells = re.split(r"(?<!\\)\|", line)
            assert cells[0] == "" and cells[-1] == "", line
            return [c.strip() for c in cells[1:-1]]
    raise AssertionError(f"no table row {first_cell!r} in:\n{text}")


# --- the pure builder ---------------------------------------------------------------------------------------
def test_quick_start_loads_the_saved_folder_when_there_is_no_hub_id() -> None:
    text = render_model_card(_data(model_location="/runs/my model/out"))
    code = _snippet(text)
    assert 'pipeline("text-generation", model="/runs/my model/out", device_map="auto")' in code
    assert '"None"' not in text and "model=None" not in text
    compile(code, "<quick start>", "exec")  # valid Python as written
    assert '[{"role": "user", "content": question}]' in code


def test_quick_start_uses_the_hub_id_when_pushed_and_a_plain_prompt_without_chat_template() -> None:
    text = render_model_card(
        _data(model_location="me/cdpo-tiny", hub_model_id="me/cdpo-tiny", chat_template=False)
    )
    code = _snippet(text)
    assert 'model="me/cdpo-tiny"' in code
    assert "generator(question, max_new_tokens=128" in code and "role" not in code
    assert "Hugging Face Hub (`me/cdpo-tiny`)" in text


def test_quick_start_path_is_a_valid_python_literal_for_awkward_paths() -> None:
    path = 'C:\\runs\\"quoted"\\é'
    namespace: dict[str, Any] = {}
    line = next(
        ln for ln in _snippet(render_model_card(_data(model_location=path))).splitlines() if "model=" in ln
    )
    exec(line.replace("pipeline(", "dict(").replace('"text-generation", ', ""), namespace)  # noqa: S102
    assert namespace["generator"]["model"] == path


def test_loss_variant_with_beta_eps_and_the_cdpo_margin_target() -> None:
    text = render_model_card(_data())
    row = _table_row(text, "`cdpo` (conservative DPO, eps = 0.1)")
    assert row[1:] == ["1", "-", "trl-conservative (built-in) 0.1.0"]
    assert "- beta = 0.25 " in text
    assert "- label_smoothing (eps) = 0.1 " in text
    assert "- `cdpo`: Conservative DPO (Mitchell, 2023)." in text
    assert f"log((1 - eps) / eps) = {math.log(9):.4g}" in text  # 2.197
    assert "IPO averaging" not in text


def test_cdpo_margin_target_is_where_the_cdpo_gradient_vanishes() -> None:
    for beta, eps in [(0.1, 0.1), (0.5, 0.25), (2.0, 0.01)]:
        target = cdpo_margin_target(beta, eps)
        assert target == pytest.approx(math.log((1 - eps) / eps))
        # Independent check through the loss itself: d loss / d h = 0 at beta * h = target.
        h = torch.tensor([target / beta], dtype=torch.float64, requires_grad=True)
        conservative_sigmoid_loss(h, torch.zeros(1, dtype=torch.float64), beta, eps).sum().backward()
        assert h.grad is not None and abs(float(h.grad)) < 1e-12
    assert cdpo_margin_target(0.1, 0.0) == math.inf


def test_sigmoid_with_label_smoothing_is_labelled_cdpo_but_not_at_eps_zero() -> None:
    sigmoid = CardLoss(
        name="sigmoid", source="trl-conservative (built-in)", version="0.1.0", citation=DPO_CITATION
    )
    text = render_model_card(_data(losses=(sigmoid,), label_smoothing=0.2))
    assert _table_row(text, "`sigmoid` (conservative DPO, eps = 0.2)")
    assert f"= {math.log(4):.4g}:" in text
    plain = render_model_card(_data(losses=(sigmoid,), label_smoothing=0.0))
    assert _table_row(plain, "`sigmoid`")
    assert "conservative DPO, eps" not in plain and "log((1 - eps) / eps)" not in plain


def test_ipo_averaging_note_and_native_and_plugin_terms() -> None:
    losses = (
        CardLoss(name="ipo", source="trl-conservative (built-in)", version="0.1.0", citation=IPO_CITATION),
        CardLoss(name="hinge", weight=0.5, source="TRL", version="1.16.0 (native)"),
        CardLoss(
            name="my_loss",
            weight=0.25,
            params=(("gamma", 0.5), ("squared", True)),
            source="my-plugin (plugin 'mine')",
            version="1.2.3",
            citation=PLUGIN_CITATION,
        ),
    )
    text = render_model_card(_data(losses=losses, beta=0.1, label_smoothing=0.0))
    assert _table_row(text, "`ipo`")[1:] == ["1", "-", "trl-conservative (built-in) 0.1.0"]
    assert _table_row(text, "`hinge`")[1:] == ["0.5", "-", "TRL 1.16.0 (native)"]
    assert _table_row(text, "`my_loss`")[1:] == [
        "0.25",
        "gamma = 0.5, squared = True",
        "my-plugin (plugin 'mine') 1.2.3",
    ]
    assert "- IPO averaging: the IPO term uses each completion's log-ratio averaged over its tokens" in text
    assert "1 / (2 beta) = 5;" in text


@pytest.mark.parametrize("name", ["/data/prefs.jsonl", "builtin:arithmetic", "./prefs", "prefs.parquet"])
def test_local_and_builtin_datasets_are_named_but_never_linked(name: str) -> None:
    text = render_model_card(replace(_data(), dataset_name=name))
    assert "huggingface.co/datasets" not in text
    assert f"on the preference dataset `{name}`" in text
    assert f"- training data: {name}, 1000 pairs" in text
    front = yaml.safe_load(text.split("---")[1])
    assert "datasets" not in front


def test_hub_dataset_ids_are_linked() -> None:
    assert is_hub_dataset_id("org/prefs") and is_hub_dataset_id("prefs")
    text = render_model_card(_data())
    assert "[org/prefs](https://huggingface.co/datasets/org/prefs)" in text
    assert yaml.safe_load(text.split("---")[1])["datasets"] == ["org/prefs"]


def test_training_settings() -> None:
    text = render_model_card(_data())
    assert "- base model: `org/base-model`" in text
    assert "- training data: org/prefs, 1000 pairs (evaluation: 100 pairs)" in text
    assert "- learning rate: 5e-07" in text
    assert "- schedule: num_train_epochs = 2 (trained 42 optimizer steps, 2 epochs)" in text
    assert (
        "- effective batch size: 64 pairs per step = 4 per device x 8 gradient accumulation x 2 processes"
        in text
    )
    assert "- precision: bf16 mixed precision (fp32 weights)" in text
    assert "- seed: 7" in text
    assert "- PEFT: none (all weights trained)" in text
    by_steps = render_model_card(_data(max_steps=3, global_step=3, epoch=0.75, world_size=1))
    assert "- schedule: max_steps = 3 (trained 3 optimizer steps, 0.75 epochs)" in by_steps
    assert "= 4 per device x 8 gradient accumulation x 1 process\n" in by_steps
    assert _data().effective_batch_size == 4 * 8 * 2


def test_precision_label() -> None:
    assert (
        precision_label(bf16=True, fp16=False, weights_dtype="float32")
        == "bf16 mixed precision (fp32 weights)"
    )
    assert (
        precision_label(bf16=False, fp16=True, weights_dtype="float16")
        == "fp16 mixed precision (fp16 weights)"
    )
    assert precision_label(bf16=False, fp16=False, weights_dtype="float32") == "fp32 (no mixed precision)"
    assert precision_label(bf16=False, fp16=False, weights_dtype="bfloat16") == "bf16 (no mixed precision)"


def test_peft_settings() -> None:
    lora = PeftSettings(
        peft_type="LORA", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=("k_proj", "q_proj")
    )
    text = render_model_card(_data(peft=lora))
    assert "- PEFT: LORA, r = 8, alpha = 16, dropout = 0.05, target modules: k_proj, q_proj" in text
    assert "holds a LORA adapter" in text
    regex = render_model_card(_data(peft=PeftSettings(peft_type="LORA", r=4, target_modules=".*proj")))
    assert "- PEFT: LORA, r = 4, target modules: .*proj" in regex


def test_framework_versions() -> None:
    text = render_model_card(_data())
    section = text.split("### Framework versions\n\n", 1)[1].split("\n\n", 1)[0]
    assert section.splitlines() == ["- TRL: 1.16.0", "- PEFT: 0.21.2", "- trl-conservative: 0.1.0"]


def test_final_metrics_take_the_last_logged_value_of_each_key() -> None:
    history = [
        {"loss": 0.7, "rewards/accuracies": 0.5, "kl/exact": 0.01, "step": 1},
        {"loss": 0.6, "rewards/accuracies": 0.6, "logratio/chosen": -0.002, "step": 2},
        {"eval_loss": 0.65, "eval_rewards/margins": 0.3, "eval_kl/exact": 0.02, "step": 2},
        {"loss": 0.5, "rewards/margins": 0.9, "logratio/chosen": 0.004, "step": 3},
        {"train_loss": 0.6, "train_runtime": 1.5, "step": 3},
    ]
    train, evaluation = final_metrics(history)
    assert train == {
        "loss": CardMetric(0.5, 3),
        "rewards/accuracies": CardMetric(0.6, 2),
        "rewards/margins": CardMetric(0.9, 3),
        "kl/exact": CardMetric(0.01, 1),  # logged every kl_exact_steps only: the last one, with its step
        "logratio/chosen": CardMetric(0.004, 3),
    }
    assert evaluation == {
        "loss": CardMetric(0.65, 2),
        "rewards/margins": CardMetric(0.3, 2),
        "kl/exact": CardMetric(0.02, 2),
    }


def test_results_table_shows_kl_when_logged_and_not_measured_otherwise() -> None:
    without = render_model_card(_data())
    assert _table_row(without, "`rewards/accuracies`")[1:3] == ["0.75 (step 42)", "0.625 (step 40)"]
    assert _table_row(without, "`rewards/margins`")[1:3] == ["1.235 (step 42)", "not measured"]
    for key in KL_KEYS:
        assert _table_row(without, f"`{key}`")[1:3] == ["not measured", "not measured"]
    train = {**_data().train_metrics, "kl/exact": CardMetric(0.0123, 40), "logratio/rejected": CardMetric(-5.0, 42)}
    evaluation = {"kl/exact": CardMetric(0.02, 40), "kl/sequence": CardMetric(1.5, 40)}
    with_kl = render_model_card(_data(train_metrics=train, eval_metrics=evaluation))
    assert _table_row(with_kl, "`kl/exact`")[1:3] == ["0.0123 (step 40)", "0.02 (step 40)"]
    assert _table_row(with_kl, "`kl/sequence`")[1:3] == ["not measured", "1.5 (step 40)"]
    assert _table_row(with_kl, "`logratio/rejected`")[1:3] == ["-5 (step 42)", "not measured"]
    assert _table_row(with_kl, "`logratio/chosen`")[1:3] == ["not measured", "not measured"]
    # Every reported metric has a one-line meaning, and pipes inside it are escaped (4 columns per row).
    for key, meaning in METRICS:
        row = _table_row(with_kl, f"`{key}`")
        assert len(row) == 4 and row[3].replace("\\|", "|") == meaning and "\n" not in meaning


def test_citations_dpo_loss_and_trl_in_order_without_duplicates() -> None:
    losses = (
        CardLoss(name="sigmoid", citation=DPO_CITATION),
        CardLoss(name="cdpo", citation=CDPO_CITATION),
        CardLoss(name="ipo", citation=IPO_CITATION),
        CardLoss(name="my_loss", citation=PLUGIN_CITATION),
    )
    text = render_model_card(_data(losses=losses))
    citations = text.split("## Citations\n", 1)[1]
    bibtex = re.findall(r"```bibtex\n(.*?)\n```", citations, re.S)
    assert bibtex[:4] == [DPO_CITATION, CDPO_CITATION, IPO_CITATION, PLUGIN_CITATION]
    assert len(bibtex) == 6 and bibtex[4].startswith("@software{vonwerra2020trl,")
    assert bibtex[5].startswith("@software{trl_conservative,")  # the package itself, last (CITATION.cff)
    assert "Cite DPO as:" in citations and "Cite the `my_loss` loss as:" in citations
    assert "Cite TRL as:" in citations and "Cite the `sigmoid` loss" not in citations
    assert "Cite trl-conservative as:" in citations
    assert "mitchell2023cdpo" in CDPO_CITATION and "2310.12036" in IPO_CITATION


def test_front_matter_is_valid_yaml_with_sorted_tags_and_parses_as_a_model_card() -> None:
    data = _data(tags=("zeta", "alpha"))
    text = render_model_card(data)
    front = _front_matter(text)
    assert front["tags"] == ["alpha", "dpo", "generated_from_trainer", "trl", "trl-conservative", "zeta"]
    assert front["base_model"] == "org/base-model" and front["datasets"] == ["org/prefs"]
    assert front["library_name"] == "transformers" and front["model_name"] == "cdpo-tiny"
    card = build_model_card(data)
    assert isinstance(card, ModelCard)
    assert card.data.tags == front["tags"] and card.data.base_model == "org/base-model"
    assert card.text.lstrip().startswith("# Model Card for cdpo-tiny")
    assert str(card) == text  # parsing and writing back changes nothing


def test_a_local_base_model_stays_out_of_the_front_matter() -> None:
    text = render_model_card(_data(base_model="/models/tiny", base_model_is_local=True, dataset_name=None))
    front = _front_matter(text)
    assert "base_model" not in front and "datasets" not in front
    assert (
        "fine-tuned version of the local model `/models/tiny` on a preference dataset (1000 pairs)." in text
    )
    assert "huggingface.co/None" not in text and "huggingface.co//models" not in text


def test_the_card_is_deterministic() -> None:
    first = render_model_card(_data(tags=("b", "a", "c")))
    assert render_model_card(_data(tags=("c", "b", "a"))) == first
    assert render_model_card(replace(_data(), tags=("a", "b", "c"))) == first


def test_card_losses_read_the_resolved_plan_with_plugin_package_params_and_citation() -> None:
    class ParamLoss:
        name = "card_param_loss"
        citation = PLUGIN_CITATION
        params = (LossParam(name="gamma", type=float, default=0.5, help="margin"),)

        def __call__(self, inputs: LossInputs) -> LossOutput:
            """A test loss with one parameter."""
            raise NotImplementedError

    @hookimpl
    def register_losses(register: Any) -> None:
        register(ParamLoss())

    with registered_plugins(("cardplug", types.SimpleNamespace(register_losses=register_losses))):
        config = ConservativeDPOConfig(
            output_dir="unused",
            use_cpu=True,
            report_to="none",
            loss_type=["cdpo", "card_param_loss", "hinge"],
            loss_weights=[1.0, 0.5, 0.25],
            loss_params={"gamma": 2},
            label_smoothing=0.1,
        )
        losses = card_losses(resolve_losses(config))
    assert [loss.name for loss in losses] == ["cdpo", "card_param_loss", "hinge"]
    cdpo, plugin, hinge = losses
    assert (cdpo.source, cdpo.version, cdpo.citation) == (
        "trl-conservative (built-in)",
        importlib.metadata.version("trl-conservative"),
        CDPO_CITATION,
    )
    assert plugin.params == (("gamma", 2.0),) and plugin.weight == 0.5
    assert (plugin.source, plugin.version, plugin.citation) == ("plugin 'cardplug'", None, PLUGIN_CITATION)
    assert (hinge.source, hinge.version, hinge.citation) == (
        "TRL",
        f"{importlib.metadata.version('trl')} (native)",
        None,
    )


def test_trl_and_transformers_still_call_the_card_hooks_we_rely_on() -> None:
    """Contract: a checkpoint goes through TRL's create_model_card and our save_model; so does push_to_hub."""
    import inspect

    from transformers import Trainer
    from trl import DPOTrainer

    assert "self.create_model_card(" in inspect.getsource(DPOTrainer._save_checkpoint)
    assert "self.save_model(" in inspect.getsource(Trainer._save_checkpoint)
    push = inspect.getsource(Trainer.push_to_hub)
    assert push.index("self.save_model(") < push.index("self.create_model_card(")


# --- a tiny real run ----------------------------------------------------------------------------------------
def _expected_cell(history: list[dict[str, Any]], key: str) -> str:
    logged = [(entry[key], entry["step"]) for entry in history if key in entry]
    return "not measured" if not logged else f"{fmt_number(logged[-1][0])} (step {logged[-1][1]})"


@pytest.mark.slow
def test_tiny_run_writes_a_card_at_checkpoint_and_save_whose_quick_start_runs(
    tiny_model_dir: Path, tiny_dataset: Any, make_config: Any, tmp_path: Path
) -> None:
    from datasets import Dataset

    from trl_conservative import ConservativeDPOTrainer
    from trl_conservative.demo.tiny import tiny_preference_rows

    out = tmp_path / "cdpo-run"
    args = make_config(
        output_dir=str(out),
        loss_type="cdpo",
        beta=0.2,
        label_smoothing=0.1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=3,
    )
    trainer = ConservativeDPOTrainer(
        model=str(tiny_model_dir),
        args=args,
        train_dataset=tiny_dataset,
        eval_dataset=Dataset.from_list(tiny_preference_rows(4, seed=1)),
    )
    trainer.train()
    checkpoint_card = (out / "checkpoint-2" / "README.md").read_text()
    assert f'model="{out / "checkpoint-2"}"' in _snippet(checkpoint_card)
    assert "- schedule: max_steps = 3 (trained 2 optimizer steps" in checkpoint_card
    trainer.save_model()

    text = (out / "README.md").read_text()
    code = _snippet(text)
    assert f'model="{out}"' in code and os.path.isabs(str(out))
    card = ModelCard.load(out / "README.md")
    assert card.data.tags == ["dpo", "generated_from_trainer", "trl", "trl-conservative"]
    assert card.data.model_name == "cdpo-run"
    assert card.data.base_model is None  # a local folder, not a hub id
    assert f"the local model `{tiny_model_dir}` on a preference dataset (16 pairs)" in text
    assert _table_row(text, "`cdpo` (conservative DPO, eps = 0.1)")[1] == "1"
    assert "- beta = 0.2 " in text and "- label_smoothing (eps) = 0.1 " in text
    assert "- learning rate: 0.001" in text
    assert "- schedule: max_steps = 3 (trained 3 optimizer steps, 0.75 epochs)" in text
    assert (
        "- effective batch size: 4 pairs per step = 2 per device x 2 gradient accumulation x 1 process"
        in text
    )
    assert "- precision: fp32 (no mixed precision)" in text  # the tiny config turns DPOConfig's bf16 default off
    assert "- training data: unnamed preference dataset, 16 pairs (evaluation: 4 pairs)" in text
    import transformers
    import trl

    assert f"- TRL: {trl.__version__}" in text and f"- Transformers: {transformers.__version__}" in text
    assert f"- Pytorch: {torch.__version__}" in text
    assert f"- trl-conservative: {importlib.metadata.version('trl-conservative')}" in text
    assert "@misc{mitchell2023cdpo," in text and "@inproceedings{rafailov2023direct," in text
    history = trainer.state.log_history
    train_history = [e for e in history if not any(k.startswith(("eval_", "train_")) for k in e)]
    eval_history = [{k.removeprefix("eval_"): v for k, v in e.items()} for e in history if "eval_loss" in e]
    for key, _meaning in METRICS:
        row = _table_row(text, f"`{key}`")
        assert row[1] == _expected_cell(train_history, key), key
        assert row[2] == _expected_cell(eval_history, key), key
    assert _table_row(text, "`rewards/accuracies`")[1] != "not measured"
    assert _table_row(text, "`rewards/margins`")[2] != "not measured"

    # Same run, same card: TRL's entry point writes exactly what save_model wrote.
    trainer.create_model_card()
    assert (out / "README.md").read_text() == text

    # Once pushed (push_to_hub sets hub_model_id, then calls create_model_card), the quick start loads the hub id.
    trainer.hub_model_id = "me/cdpo-run"
    trainer.create_model_card(model_name="cdpo-run", dataset_name="org/prefs", tags=["zz-extra"])
    pushed = ModelCard.load(out / "README.md")
    assert 'model="me/cdpo-run"' in _snippet(pushed.text) and str(out) not in _snippet(pushed.text)
    assert pushed.data.tags == ["dpo", "generated_from_trainer", "trl", "trl-conservative", "zz-extra"]
    assert pushed.data.datasets == ["org/prefs"]
    trainer.hub_model_id = None

    # The quick start runs as written, offline, on the saved folder (2 new tokens instead of 128, for speed).
    assert code.count("max_new_tokens=128") == 1
    stdout, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(stdout):
        exec(code.replace("max_new_tokens=128", "max_new_tokens=2"), namespace)  # noqa: S102
    generated = namespace["output"]["generated_text"]
    assert isinstance(generated, str) and stdout.getvalue() == generated + "\n"
    assert namespace["generator"].model.name_or_path == str(out)


@pytest.mark.slow
def test_peft_run_card_lists_the_adapter_and_its_quick_start_loads_it(
    tiny_model_dir: Path, tiny_dataset: Any, make_config: Any, tmp_path: Path
) -> None:
    from peft import LoraConfig
    from transformers import pipeline

    from trl_conservative import ConservativeDPOTrainer

    out = tmp_path / "lora-run"
    peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["v_proj", "q_proj"])
    trainer = ConservativeDPOTrainer(
        model=str(tiny_model_dir),
        args=make_config(output_dir=str(out), loss_type="ipo", max_steps=1),
        train_dataset=tiny_dataset,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model()
    text = (out / "README.md").read_text()
    assert "- PEFT: LORA, r = 4, alpha = 8, dropout = 0, target modules: q_proj, v_proj" in text
    assert "holds a LORA adapter" in text
    assert "IPO averaging" in text and "1 / (2 beta) = 5;" in text
    assert "@inproceedings{azar2024general," in text
    assert (out / "adapter_config.json").exists()
    generator = pipeline("text-generation", model=str(out))
    output = generator("1+2=", max_new_tokens=2, do_sample=False, return_full_text=False)[0]
    assert isinstance(output["generated_text"], str)
