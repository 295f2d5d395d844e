"""The command-line front ends: run_ablation.py (`run-ablation`) and plot_roadmap.py (`plot-roadmap`)."""
