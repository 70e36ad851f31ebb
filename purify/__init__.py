"""purify: input purification for image classifiers."""
