"""Results of a study: the runs table, the per-step summary with its statistics, the files, the figures.

Nothing here imports torch; only the summary of a tracked study reads MLflow (through roadmap.tracking).
"""
