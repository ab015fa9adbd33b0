"""Training the dialog-level model: options, data, the model, steps, the fit loop, run files."""
