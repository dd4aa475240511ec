"""Visuomotor diffusion policy: data, normalizer, networks, objectives, training.

Importing this package is cheap (no torch): the runtime imports ``policy.keys`` and
``policy.protocol`` without pulling in the network code.
"""
