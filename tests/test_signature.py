"""The drop-in constructor shows TRL's own parameters (issue 22 item 5): `help()`, IDEs and mypy see them."""

from __future__ import annotations

import inspect
import pydoc

import pytest
from trl import DPOTrainer

from trl_conservative import ConservativeDPOTrainer

pytestmark = pytest.mark.core


def _shape(init: object) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(init).parameters.values()]  # type: ignore[arg-type]


def test_the_same_named_parameters_as_the_installed_trl_dpotrainer() -> None:
    ours, theirs = _shape(ConservativeDPOTrainer.__init__), _shape(DPOTrainer.__init__)
    assert ours == theirs
    assert {"train_dataset", "processing_class", "peft_config"} <= {name for name, _, _ in ours}


def test_the_constructor_has_a_docstring_naming_every_parameter() -> None:
    doc = inspect.getdoc(ConservativeDPOTrainer.__init__) or ""
    assert doc.startswith("Build the trainer") and "Initialize self" not in doc
    names = [n for n in inspect.signature(ConservativeDPOTrainer.__init__).parameters if n != "self"]
    assert [n for n in names if n not in doc] == []


def test_help_shows_the_parameters() -> None:
    text = pydoc.render_doc(ConservativeDPOTrainer, renderer=pydoc.plaintext)
    assert "processing_class" in text and "train_dataset" in text and "*pargs" not in text
