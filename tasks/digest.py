"""Content digests: of files and folders, and of the code a stage runs (its import closure, read from the source)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tasks.location import Location, as_location, files_with_names, open_binary
from tasks.location import name as location_name

PACKAGES = ("models", "tasks")


def tree_digest(paths: Iterable[Location | None], h=None) -> str:
    """Digest of the relative names and bytes of every file under ``paths`` (files or folders, sorted; local or
    on object storage, :mod:`tasks.location`). An object whose store keeps a content tag (S3's ETag, GCS's MD5)
    contributes that tag instead of its bytes: the tag changes whenever the bytes do, and reading a
    scene's bytes back over the network only to hash them would cost more than the work they key."""
    h = h or hashlib.blake2b(digest_size=16)
    for given in paths:
        if given is None:
            continue
        root = as_location(given)
        h.update(f"<{location_name(root)}>".encode())
        for rel, f, tag in files_with_names(root):
            h.update(rel.encode())
            if tag is not None:
                h.update(f"\0tag:{tag}".encode())
                continue
            with open_binary(f) as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ import closure

#: Files the code reads at run time besides Python modules: the fused kernel's source, compiled on first use.
PACKAGE_DATA = {"models/nerf/kernels.py": ("models/nerf/csrc/hashgrid.cpp",)}


def project_root() -> Path:
    """The folder that holds the ``models`` and ``tasks`` packages."""
    return Path(__file__).resolve().parents[1]


def module_file(module: str, root: Path) -> Path | None:
    """The source file of a dotted module under ``root`` (a package's ``__init__.py``), or None."""
    path = root.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, root: Path, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Dotted names of the ``packages`` modules that ``path`` imports anywhere (top level or inside functions),
    relative imports resolved; ``from a import b`` names both ``a`` and ``a.b`` (``b`` may be a module)."""
    import ast

    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(root).parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] in packages}


def _has_code(path: Path) -> bool:
    """False for a package ``__init__.py`` that holds nothing but a docstring."""
    import ast

    body = ast.parse(path.read_text()).body
    return not (path.name == "__init__.py" and all(isinstance(n, ast.Expr) for n in body))


def source_closure(module: str, root: Path | None = None, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """The project files (paths relative to ``root``, sorted) that running ``module`` executes or reads: its
    source, every ``packages`` module it imports transitively (parent packages included; ``__init__.py`` files
    with only a docstring left out) and their :data:`PACKAGE_DATA`. What a stage's ``dvc.yaml`` deps list."""
    root = root or project_root()
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]), root)
            if path is not None and path not in seen:
                seen.add(path)
                todo += imported_modules(path, root, packages)
    files = {str(p.relative_to(root)) for p in seen if _has_code(p)}
    files |= {data for f in list(files) for data in PACKAGE_DATA.get(f, ())}
    return sorted(files)


def closure_version(module: str) -> str:
    """Digest of :func:`source_closure` of ``module``: changes exactly when the code a stage runs changes."""
    root = project_root()
    h = hashlib.blake2b(digest_size=16)
    for rel in source_closure(module, root):
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()
