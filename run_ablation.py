"""Train, evaluate and track every cumulative step of a modernization roadmap (or plan it without training).

The command itself is `roadmap.cli.ablation`; an installed package also provides it as `run-ablation`.
"""
from roadmap.cli.ablation import main

if __name__ == "__main__":
    main()
