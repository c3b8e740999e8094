"""Where tk-analyze writes: a folder holding NAME.png and NAME.json, replaced atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from toolkit.data.atomic import atomic_output_dir


def write_analysis(
    checkpoint: str, output: Optional[str], name: str, report: Dict[str, Any], png: bytes
) -> Dict[str, Any]:
    """Write OUTPUT/NAME.png and OUTPUT/NAME.json (default OUTPUT: beside the checkpoint, CHECKPOINT_NAME/).

    Returns the report with the paths of both files added.
    """
    folder = Path(output) if output else Path(checkpoint).with_name(f"{Path(checkpoint).stem}_{name}")
    with atomic_output_dir(folder, overwrite=True) as tmp:
        (tmp / f"{name}.png").write_bytes(png)
        (tmp / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return {**report, "png": str(folder / f"{name}.png"), "json": str(folder / f"{name}.json")}
