"""The nixl data plane: NIXL (UCX: RDMA, NVLink, TCP) writes K/V and E into the receiver's slots (see plane.py)."""
