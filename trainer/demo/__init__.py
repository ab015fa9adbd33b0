"""``m2f demo``: the generated corpus where fusion pays, and the chain run on it."""
