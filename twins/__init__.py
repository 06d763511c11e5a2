"""Framework-free core shared by the Keras twin (`keras_impl`) and the PyTorch twin (`torch_impl`).

Nothing in this package imports keras; torch is imported lazily, only to read `.pth` files.
"""
