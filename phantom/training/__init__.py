"""How the shipped phantom models were made: recipes, attention routing, probes, data encoding, evaluation.

Retrain one with `python -m phantom.training.train positive|pooling|shortcut|relocation`, the
multi-image study control with `python -m phantom.training.study`; the decoy control is built from
the positive one, without training, by `python -m phantom.training.decoy`.
"""
