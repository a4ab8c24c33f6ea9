"""Keeping a run safe: the NaN guard, SIGINT/SIGTERM checkpoints, resume, the output folder a run owns (its lock
and run id) and atomic writes of the files a report is made from.

    nan_guard      stop at the first NaN/inf loss; never save non-finite weights
    interrupt      SIGINT/SIGTERM: checkpoint at the next step boundary, then stop
    checkpoints    finding and checking checkpoints; which one a run resumes from
    callback_state our callbacks' state in trainer_state.json, restored in place when resuming
    output_dir     whose run a folder holds (run id, identity), what a new run may do there
    lock           one run per output folder
    atomic         temp file + rename, so Ctrl-C leaves the old file or the whole new one
    process_exit   how a process of a multi-process run ends (after the others, without a teardown abort)
"""

__all__: list[str] = []
