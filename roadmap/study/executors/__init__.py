"""Where units of work run as jobs: submitit's local executor, or SLURM job arrays. They know nothing of the
networks or of MLflow: they start a callable on payloads and report how its jobs are doing."""
