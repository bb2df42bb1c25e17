"""Shared pieces of emlive: readers and writers, normalisation, windows, the network, the model card.

Every component imports these; none copies them. This package imports no other emlive component.
"""
