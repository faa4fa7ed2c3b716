"""The experiment spec's JSON schemas in `openapi.yaml`, generated from the pydantic model
that validates specs (`sluice.core.spec.ExperimentSpec`), so the contract states exactly
the fields, types, ranges and patterns the server accepts.

`python -m services.api.openapi_schemas` rewrites the generated part of `openapi.yaml`
(everything after the marker line); `tests/unit/test_api_routes.py` fails when it is out
of date. Rules that span fields (the default arm is an arm, every arm sets every
parameter) are beyond JSON Schema: the server answers them with 400 and `problems`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from sluice.core.spec import ExperimentSpec

OPENAPI = Path(__file__).resolve().parent / "openapi.yaml"
MARKER = "    # Generated from sluice.core.spec.ExperimentSpec by services/api/openapi_schemas.py; do not edit below.\n"


def spec_schemas() -> dict[str, Any]:
    """`ExperimentSpec`, the models it names, and `ExperimentSpecUpdate` (the same, with
    `id` optional: a PUT's path names it), as OpenAPI component schemas."""
    schema = ExperimentSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs")
    update = copy.deepcopy(schema)
    update["required"] = [name for name in update["required"] if name != "id"]
    update["title"] = "ExperimentSpecUpdate"
    return {"ExperimentSpec": schema, "ExperimentSpecUpdate": update, **dict(sorted(defs.items()))}


def render(document: str) -> str:
    """`document` (openapi.yaml's text) with its generated part made anew."""
    head = document.split(MARKER, 1)[0]
    generated = yaml.safe_dump(spec_schemas(), sort_keys=False, width=110, allow_unicode=True)
    return head + MARKER + "".join(f"    {line}\n" for line in generated.splitlines())


if __name__ == "__main__":
    OPENAPI.write_text(render(OPENAPI.read_text()))
