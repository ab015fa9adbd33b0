"""``m2f report``: metrics from saved predictions, tables, plots, the paper's numbers beside."""
