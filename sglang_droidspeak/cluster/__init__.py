"""Several fine-tunes of one foundation model served as one service (imports no SGLang).

``config`` loads and validates the cluster YAML, ``check`` checks it against the model
directories and profiles, ``layout`` turns it into per-server launch plans, and ``cli``
is ``droidspeak check``.
"""

from sglang_droidspeak.cluster.check import CheckReport, PairStatus, check_cluster
from sglang_droidspeak.cluster.config import (
    ClusterConfig,
    ClusterConfigError,
    ModelConfig,
    ReplicaConfig,
    RouterConfig,
    SloConfig,
    TransferConfig,
    load_cluster_config,
    parse_cluster_config,
)
from sglang_droidspeak.cluster.layout import ClusterPlan, ServerPlan, plan_cluster, transfer_ports

__all__ = [
    "CheckReport", "ClusterConfig", "ClusterConfigError", "ClusterPlan", "ModelConfig", "PairStatus",
    "ReplicaConfig", "RouterConfig", "ServerPlan", "SloConfig", "TransferConfig", "check_cluster",
    "load_cluster_config", "parse_cluster_config", "plan_cluster", "transfer_ports",
]
