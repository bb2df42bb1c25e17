"""napari plugin for emlive (npe2 manifest in napari.yaml): readers, Denoise, Train and Live widgets."""
