"""Training one network under one recipe: the engine, its optimizer and schedule, typed results, resume,
distributed processes, batch splits and throughput measurement. Nothing here imports MLflow."""
