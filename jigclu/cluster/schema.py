"""Ray's own JSON schema for cluster-launcher configs (``ray/autoscaler/ray-schema.json``, the
one ``ray up`` validates against), with each violation reported at its key path.

The schema file is read from Ray's installed package directory, so Ray itself is not imported.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from jigclu.cluster.issues import KeyPath, Problem
from jigclu.errors import ConfigError


def _ray_schema_path() -> Path:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("Ray is not installed; cannot validate cluster configs")
    return Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"


@functools.cache  # read once: `validate` checks every file against the same schema
def _ray_schema() -> dict[str, Any]:
    return json.loads(_ray_schema_path().read_text(encoding="utf-8"))


def schema_problems(config: dict[str, Any]) -> list[Problem]:
    """Every violation of Ray's ``ray-schema.json``, with the key path it applies to."""
    import jsonschema  # a dependency of ray[default]; imported late to keep the CLI fast

    schema = _ray_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems: list[Problem] = []
    for err in sorted(validator.iter_errors(config), key=lambda e: str(list(e.absolute_path))):
        path: KeyPath = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = list((err.schema.get("properties") or {}).keys())
            patterns = list((err.schema.get("patternProperties") or {}).keys())
            for key in err.instance:
                if key in allowed or any(re.search(p, str(key)) for p in patterns):
                    continue
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                msg = "unknown key (not in Ray's cluster-config schema)"
                if hint:
                    msg += f"; did you mean {hint[0]!r}?"
                problems.append((path + (key,), msg))
        elif err.validator == "required" and isinstance(err.instance, dict):
            for key in err.validator_value:
                if key not in err.instance:
                    problems.append((path + (key,), "missing (required by Ray's cluster-config schema)"))
        else:
            message = err.message
            if len(message) > 160:
                message = message[:157] + "..."
            problems.append((path, f"{message} (Ray's cluster-config schema)"))
    return problems

