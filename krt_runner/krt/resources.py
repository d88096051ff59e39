"""What a node asks of the machine it runs on, from krt.yml: ``replicas`` and ``resources``.

::

    nodes:
      - name: classify
        src: src/classify.py
        replicas: 2                # processes sharing the node's queue group (default 1)
        gpu: true                  # KRE v1's field: one nvidia.com/gpu
        resources:                 # Kubernetes quantities; HEAT runner types' cpuLimit and memoryLimit
          cpuLimit: "2"
          memoryLimit: 2Gi
          cpuRequest: 500m         # default: the limit
          memoryRequest: 1Gi       # default: the limit

``krt-runner manifests`` turns them into a Deployment's replicas, requests and limits; ``check`` validates them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from krt_runner.setting_values import MAX_REPLICAS

# A Kubernetes quantity (its grammar in k8s.io/apimachinery's quantity.go): a number with an optional suffix, binary
# (Ki to Ei), decimal (n, u, m for fractions; k to E) or an exponent (1e3). Negative ones are refused (resources).
_QUANTITY = re.compile(r"^\+?(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
                       r"(?P<suffix>[KMGTPE]i|[eE][+-]?[0-9]{1,6}|[numkMGTPE])?$")
_MULTIPLES = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
              **{f"{prefix}i": 2.0 ** (10 * power) for power, prefix in enumerate("KMGTPE", start=1)}}
_LARGEST = 2.0**63  # Kubernetes keeps a quantity in 63 bits
FIELDS = {"cpuLimit": "cpu_limit", "memoryLimit": "memory_limit", "cpuRequest": "cpu_request",
          "memoryRequest": "memory_request"}  # fmt: skip


@dataclass(frozen=True)
class Resources:
    """A node's CPU and memory, as Kubernetes quantities; empty means not set."""

    cpu_limit: str = ""
    memory_limit: str = ""
    cpu_request: str = ""
    memory_request: str = ""

    def requests(self) -> dict[str, str]:
        """What the scheduler reserves: each request, or its limit when only that is set."""
        return _present(cpu=self.cpu_request or self.cpu_limit, memory=self.memory_request or self.memory_limit)

    def limits(self) -> dict[str, str]:
        return _present(cpu=self.cpu_limit, memory=self.memory_limit)

    def document(self) -> dict[str, str]:
        """The krt.yml mapping (only the fields that are set)."""
        return {key: getattr(self, field) for key, field in FIELDS.items() if getattr(self, field)}


def read_resources(value: Any, where: str, problem: Callable[[str, str], None]) -> Resources:
    """``resources`` of a node: a mapping of the four fields, each a quantity; ``problem(where, what)`` otherwise."""
    if value is None:
        return Resources()
    if not isinstance(value, dict):
        problem(where, f"must be a mapping with {', '.join(FIELDS)}")
        return Resources()
    found: dict[str, str] = {}
    for key, raw in value.items():
        if key not in FIELDS:
            problem(f"{where}.{key}", f"unknown field; expected one of {', '.join(FIELDS)}")
        elif wrong := _quantity_problem(raw):
            problem(f"{where}.{key}", wrong)
        else:
            found[FIELDS[key]] = str(raw)
    for kind in ("cpu", "memory"):  # Kubernetes refuses a pod whose request is above its limit
        request, limit = found.get(f"{kind}_request"), found.get(f"{kind}_limit")
        if request and limit and _amount(request) > _amount(limit):
            problem(f"{where}.{kind}Request", f"{request} is above {kind}Limit {limit}: Kubernetes refuses such a pod")
    return Resources(**found)


def _quantity_problem(raw: Any) -> str:
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool) or not _QUANTITY.match(str(raw)):
        return f"{raw!r} is not a Kubernetes quantity, e.g. 500m or 2 (CPU), 512Mi (memory)"
    if not _amount(str(raw)) <= _LARGEST:
        return f"{raw!r} is larger than any quantity Kubernetes takes"
    return ""


def _amount(quantity: str) -> float:
    """A quantity matched by _QUANTITY, as a plain number (cores, bytes)."""
    parts = _QUANTITY.match(quantity)
    assert parts is not None
    number, suffix = float(parts["number"]), parts["suffix"] or ""
    if suffix in _MULTIPLES:
        return number * _MULTIPLES[suffix]
    return float(f"{number}e{int(suffix[1:])}")  # an exponent (e3, E-3): inf when too large, never an OverflowError


def read_replicas(value: Any, where: str, problem: Callable[[str, str], None]) -> int:
    """``replicas`` of a node: a whole number of at least 1 (default 1) that Kubernetes can hold."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
        problem(where, f"must be a whole number of at least 1 and at most {MAX_REPLICAS}, not {value!r}")
        return 1
    return value


def _present(**values: str) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}
