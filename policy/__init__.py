"""Visuomotor diffusion policy: data, normalizer, networks, objectives, training.

Importing this package is cheap (no torch): the runtime imports ``policy.keys`` and
``policy.protocol`` without pulling in the network code, and an exported policy (``policy.export``) is
served by ``policy.loader`` / ``policy.onnx_policy`` with onnxruntime and numpy alone.
"""
