"""A study: presets, the resolved options, the plan, the unit of work, launching and collecting, --benchmark."""
