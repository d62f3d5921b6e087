"""The cuda_ipc data plane (see plane.py)."""
