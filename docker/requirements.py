"""Print otrain's runtime requirements (from pyproject.toml) for an image build, one per line.

The images install these first, with the pinned constraints, in a layer of their own, so that a
change to otrain's code does not reinstall TensorFlow. ``gpu`` swaps the CPU TensorFlow wheel
for ``tensorflow[and-cuda]`` (CUDA and cuDNN as pip wheels), at the same pinned release.

usage: python3 docker/requirements.py cpu|gpu [pyproject.toml]
       python3 docker/requirements.py cuda-pins PIP_REPORT    (make lock: the CUDA wheels' pins
       from ``pip install --dry-run --report`` of tensorflow[and-cuda], for constraints-gpu.txt)
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

#: Optional dependency groups every image carries (PostgreSQL driver for the MLflow server).
IMAGE_EXTRAS = ("server",)
TENSORFLOW_PACKAGES = {"tensorflow", "tensorflow-cpu"}


def requirements(pyproject: Path, variant: str) -> list[str]:
    """Return the requirement lines of ``variant`` (``cpu`` or ``gpu``)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        lines += project["optional-dependencies"][extra]
    if variant == "cpu":
        return lines
    tensorflow = [line for line in lines if _name(line) in TENSORFLOW_PACKAGES]
    others = [line for line in lines if _name(line) not in TENSORFLOW_PACKAGES]
    specifier = re.search(r"[<>=!~][^;]*", tensorflow[0]).group(0).strip()
    return [*others, f"tensorflow[and-cuda]{specifier}"]


def _name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower().replace("_", "-")


def cuda_pins(report: Path) -> list[str]:
    """Return ``name==version`` of the NVIDIA wheels in a ``pip install --report`` file."""
    packages = [item["metadata"] for item in json.loads(report.read_text())["install"]]
    return sorted(
        f"{meta['name'].lower()}=={meta['version']}" for meta in packages if _name(meta["name"]).startswith("nvidia-")
    )


def main(argv: list[str]) -> int:
    """Print the requirements or pins; exit status 2 on bad arguments."""
    if len(argv) == 3 and argv[1] == "cuda-pins":
        header = [
            "# CUDA libraries of tensorflow[and-cuda] for docker/Dockerfile.gpu, at the TensorFlow release of",
            "# constraints.txt. Regenerate: make lock",
        ]
        print("\n".join(header + cuda_pins(Path(argv[2]))))
        return 0
    if len(argv) not in (2, 3) or argv[1] not in ("cpu", "gpu"):
        print("usage: requirements.py cpu|gpu [pyproject.toml] | cuda-pins PIP_REPORT", file=sys.stderr)
        return 2
    print("\n".join(requirements(Path(argv[2] if len(argv) == 3 else "pyproject.toml"), argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
