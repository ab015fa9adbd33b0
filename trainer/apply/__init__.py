"""A trained model applied: export, predict, the live API and its HTTP server, model-folder checks."""
