"""Where every benchmark writes its raw figures: JSON under bench/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def writeResults(data: Any, where: str) -> None:
    """Write C{data} as indented JSON to C{where}, making its folder, and say where."""
    path = Path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    print(f"\nwritten to {path}")
