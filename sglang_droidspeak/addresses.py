"""Hosts and ports as this project accepts them: the one place the syntax rules live.

    host_problem("127.0.0.1") == ""          an IPv4 or IPv6 literal
    host_problem("gpu-node-3.lan") == ""     an RFC 1123 host name (labels of 1-63 letters,
                                              digits, '-', not starting or ending with '-';
                                              253 characters at most)
    host_problem("*", wildcard=True) == ""   ZMQ's any-interface bind (transfer.bind_host)
    host_problem("my host") -> "must be an IP address or a host name (...)"

``port_problem`` checks 1..65535. ``is_local_host`` says whether a listen host is this
machine (loopback, a wildcard, or this host's name): only those hosts' GPUs can be
checked here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

WILDCARD_HOSTS = ("0.0.0.0", "::", "*")
LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def host_problem(host: Any, wildcard: bool = False) -> str:
    """Why ``host`` is not a valid host, or "" when it is."""
    if not isinstance(host, str) or not host:
        return "must be a non-empty string"
    if wildcard and host == "*":
        return ""
    if _is_ip(host) or _is_host_name(host):
        return ""
    return "must be an IP address or a host name (letters, digits, '-' and '.')"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_host_name(host: str) -> bool:
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def port_problem(port: Any) -> str:
    """Why ``port`` is not a TCP port (an int in 1..65535), or "" when it is."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return "must be an integer in 1..65535"
    return ""


def is_local_host(host: str) -> bool:
    """Whether a listen ``host`` is on this machine: loopback, a wildcard or this host's name."""
    if host in WILDCARD_HOSTS or host.lower() in LOOPBACK_NAMES:
        return True
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    return host.lower() == socket.gethostname().lower()
