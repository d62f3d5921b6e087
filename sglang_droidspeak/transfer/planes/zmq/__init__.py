"""The zmq data plane: host-staged LayerChunks on the fetch socket (see plane.py)."""
