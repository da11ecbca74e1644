"""Datasets, partitioners, Keras models and the local training core (TensorFlow is imported lazily)."""
