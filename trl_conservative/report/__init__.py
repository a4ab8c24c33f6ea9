"""What a run reports: the summary (plain data over the log history), the Rich report and live line, the curves,
the suspected-flip list. Only the modules that render (`console`, `live`, `losses_table`) import rich.
"""

__all__: list[str] = []
