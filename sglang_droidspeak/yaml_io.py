"""One YAML loader for every config, profile and latency-model file this project reads.

PyYAML implements YAML 1.1, whose float pattern needs a '.' in the mantissa: it reads
``1e-06`` (what ``json.dumps(1e-06)`` and Python's ``repr`` write) as the *string*
"1e-06", so a JSON settings file or a calibrated latency model with a small number would
fail validation ("must be a number, got '1e-06'"). ``load_yaml`` resolves floats as YAML
1.2 does (a JSON number is always a YAML 1.2 number), and is otherwise ``yaml.safe_load``:

    text          yaml.safe_load    load_yaml
    1e-06         '1e-06'           1e-06
    1.5e3, .5     1500.0, 0.5       1500.0, 0.5
    "1e-06"       '1e-06'           '1e-06'    (quoted: stays a string)
    1_000, 0x10   1000, 16          1000, 16   (ints unchanged)
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's float resolver."""


_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in list("-+.0123456789"):
    _Loader.yaml_implicit_resolvers.setdefault(_first, [])
    # after the int resolver (ints stay ints), before the str fallback
    _Loader.yaml_implicit_resolvers[_first].append(("tag:yaml.org,2002:float", _FLOAT_12))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` with YAML 1.2 floats (``1e-06`` is a number)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
