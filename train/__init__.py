"""emlive.train: the offline self-supervised trainer of the blind-spot network."""
