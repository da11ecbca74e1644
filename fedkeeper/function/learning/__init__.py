"""Datasets, partitioners, the models (numpy init and evaluation; Keras for local training, imported lazily)."""
