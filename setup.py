"""Packaging for S2VNet. Installed by scripts/setup.sh (which also installs Detectron2)."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_requirements(name: str) -> list:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def read_version() -> str:
    for line in (ROOT / "s2vnet" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("s2vnet/__init__.py has no __version__")


setup(
    name="s2vnet",
    version=read_version(),
    description="S2VNet: universal (automatic + interactive) volumetric medical image segmentation "
    "by clustering propagation (CVPR 2024), on Detectron2",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["s2vnet", "s2vnet.*"]),
    package_data={"s2vnet": ["data/datasets/splits/*.json", "data/segment_codes.json"]},
    # Detectron2 is installed by scripts/setup.sh: it is not on PyPI under its own name.
    install_requires=read_requirements("requirements.txt"),
    extras_require={
        "test": read_requirements("requirements-test.txt"),
        "bench": read_requirements("requirements-bench.txt"),
    },
)
