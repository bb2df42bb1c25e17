"""emlive.viewer: the live browser viewer (``emlive view``).

A small aiohttp server (:mod:`emlive.viewer.server`) subscribes to the service's output and status sockets
(:mod:`emlive.viewer.source`), prepares the newest raw/denoised pair for each browser (:mod:`emlive.viewer.render`)
and serves one static page (``viewer/static``). It depends on ``emlive.core`` only (checked by import-linter).
"""
