"""emlive.bench: benchmarks. Speed goals are reported as ratios measured side by side in one run."""
