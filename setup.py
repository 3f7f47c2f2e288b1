"""Generates the protobuf/gRPC stubs into the wheel at build time (they are never committed)."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO_ROOT = Path(__file__).parent / "protos"


def generate_stubs(out_dir: Path) -> None:
    """Compile protos/itsmesh/v1/*.proto into out_dir/itsmesh/v1 as a typed, importable package."""
    from grpc_tools import protoc  # build-time requirement (pyproject [build-system])

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "itsmesh" / "v1").glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    (out_dir / "itsmesh" / "v1").mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed to compile protos/itsmesh/v1")
    for package in (out_dir / "itsmesh", out_dir / "itsmesh" / "v1"):
        (package / "__init__.py").touch()
        (package / "py.typed").touch()


class BuildPyWithStubs(build_py):
    """build_py that also writes the generated stubs into the wheel."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # editable installs use the stubs `make protos` writes in the tree
            generate_stubs(Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithStubs})
