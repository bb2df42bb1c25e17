"""emlive.stream: the live ZeroMQ denoising service (issue "The live denoising service over ZeroMQ").

Not built yet. It will depend on ``emlive.export.runtime`` and ``emlive.core`` only (checked by import-linter).
"""
