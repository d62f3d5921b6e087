"""Data planes: how a fetch's E and K/V move from a sender to a receiver.

Each plane lives in its own folder (zmq/, cuda_ipc/, nccl/, nixl/) holding its control
frames (``frames.py``), its sender and receiver, and ``plane.py`` (its ``PLANE`` spec).
``base.py`` states the contracts; ``registry.py`` names the planes (one line each).
"""
