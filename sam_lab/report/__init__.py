"""Reporting: sweeps -> tables and plots, beside the published numbers.

- `published.yaml`: the published tables as data (layouts, row/column -> config selectors, numbers, recipes);
- `published.py`: loads it into `TableSpec`s;
- `runs.py`: reads run and sweep directories (`Run`, `find_runs`);
- `tables.py`: places runs in table cells (seeds aggregated, recipe checked, single-pass runs deduplicated);
- `render.py`: cells -> Markdown / CSV, and docs/published.md;
- `plots.py`: curves per epoch and accuracy/sharpness against rho (matplotlib);
- `cli.py`: the command-line plumbing scripts/make_tables.py and scripts/plot_runs.py share.
"""
