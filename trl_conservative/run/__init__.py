"""`trl-conservative run`: settings (YAML + flags) checked before anything is written, data loaded and validated,
the output folder claimed, then training, the saved model and the report files.

    args            the settings of a run, parsed through TRL's `TrlParser`
    renamed         settings the installed transformers knows by another name (activation_checkpointing, ...)
    settings_check  one check of every setting before anything is written or loaded
    files           precise messages for files that cannot be read
    data            the preference data set: loaded, split, its rows validated
    validate        the row checks (`validate_preference_data`)
    preflight       resume, output folder, rows and prompt lengths, before any weights load
    remote_code     the trust_remote_code policy: a model's own code runs only when asked for
    plan            `RunPlan`: what the run will do, decided before it writes anything (`plan_run`)
    refusals        which library exceptions are a setting refused; the out-of-memory line
    runner          `run_training`: plan, then act on it: build, train, save, write the report's inputs
    label_noise     the flip estimate and the suspected-flip list, from the trained trainer
    commands        the resume and finish commands a stopped run prints
    deferred_logs   log records held back while the settings parse
"""

__all__: list[str] = []
