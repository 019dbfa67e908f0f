"""How the shipped phantom models were made: recipes, attention routing, probes, data encoding, evaluation.

Retrain one with `python -m phantom.training.train positive|pooling|shortcut`.
"""
