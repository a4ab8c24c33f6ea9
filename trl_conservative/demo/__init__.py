"""The offline demo behind `trl-conservative run` with no config: a tiny model taught addition (the reference) and
the shipped arithmetic preference pairs.

    tasks     the verifiable arithmetic task (prompts, answers, preference pairs)
    tiny      tiny random Llama models and a character-level tokenizer, saved locally
    embedded  the embedded default config and the `builtin:` model and data set
"""

__all__: list[str] = []
