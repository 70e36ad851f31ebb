"""purify's inference server: the Open Inference Protocol (KServe v2) over a defended classifier.

Modules, in the order a request meets them:

- :mod:`serving.config`: model-repository configs (TOML / YAML), validated at start-up;
- :mod:`serving.app`: the v2 REST app (starlette), ``/metrics``, body limits, error mapping;
- :mod:`serving.protocol`: JSON and binary tensors, gzip / deflate bodies;
- :mod:`serving.model`: request checks, per-request parameters, outputs, v2 metadata;
- :mod:`serving.batcher`: the asyncio dynamic batcher (Triton's semantics);
- :mod:`serving.backends`: torch (CUDA when available) and ONNX Runtime execution, both of the
  library's :class:`~purify.pipeline.Pipeline` (no second implementation of stage dispatch);
- :mod:`serving.onnx_graph`: a :class:`~purify.pipeline.DefendedClassifier` as one ONNX graph, its
  per-sample inputs (drawn by the pipeline), and the verification against torch;
- :mod:`serving.export`: ``purify-export``, a served model's config through ``onnx_graph``;
- :mod:`serving.cli`: ``purify-serve``; :mod:`serving.ray_app`: the Ray Serve deployment.

``serving`` imports ``purify``, never the other way round.
"""
