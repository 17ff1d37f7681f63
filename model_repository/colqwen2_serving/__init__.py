"""Plain-Python logic behind the Triton models: no `triton_python_backend_utils`, no torch.

`model.py` files in the model repository are thin adapters over these modules, so everything
here is unit-tested directly and shared by the export validation (letterbox) and the service.
"""
