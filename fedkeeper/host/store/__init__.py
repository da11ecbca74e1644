"""The store's host-side part: the embedded MongoDB server and the guard that ends it."""
