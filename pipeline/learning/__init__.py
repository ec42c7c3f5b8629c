"""IAENet training machinery: windows, labels, post-processing, the training step."""
