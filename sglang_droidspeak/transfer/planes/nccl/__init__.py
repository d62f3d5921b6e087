"""The nccl data plane (see plane.py)."""
