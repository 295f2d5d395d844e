"""Draw a study's figures (roadmap chart, accuracy vs GMACs and vs throughput) from MLflow, a CSV or the paper.

The command itself is `roadmap.cli.plot`; an installed package also provides it as `plot-roadmap`.
"""
from roadmap.cli.plot import main

if __name__ == "__main__":
    main()
