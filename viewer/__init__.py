"""emlive.viewer: the live browser viewer (issue "The live viewer").

Not built yet. It will depend on ``emlive.core`` only (checked by import-linter).
"""
