"""emlive.stream: the live ZeroMQ denoising service.

* :mod:`emlive.stream.service` - :class:`~emlive.stream.service.DenoiseService` (``emlive serve``): detector
  frames in (SUB or PULL), denoised frames out (PUB), telemetry, control, model swaps, recording; composed of
  :mod:`~emlive.stream.receiver` (input socket + overload policy), :mod:`~emlive.stream.pipeline` (decode, window,
  infer, publish), :mod:`~emlive.stream.modelslot` (load, warm up, swap) and :mod:`~emlive.stream.control`;
* :mod:`emlive.stream.detector` - :class:`~emlive.stream.detector.DetectorSimulator` (``emlive detector``);
* :mod:`emlive.stream.window` - the rolling window (live output equals offline output);
* :mod:`emlive.stream.recording` - per-acquisition recording that survives a crash;
* :mod:`emlive.stream.telemetry` - per-stage rates, latency percentiles, counters.

The wire protocol is :mod:`emlive.core.protocol` (``docs/protocol.md``). This package depends on
``emlive.export.runtime`` and ``emlive.core`` only (checked by import-linter).
"""
