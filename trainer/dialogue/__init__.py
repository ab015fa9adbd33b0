"""Training the dialogue-level model: options, data, the model, steps, the fit loop, run files."""
