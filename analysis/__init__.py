"""emlive.analysis: offline noise statistics, evaluation metrics and bulk denoising of recorded data."""
