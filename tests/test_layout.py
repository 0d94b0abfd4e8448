"""The house rules of the layout (docs/design.md, Layout), checked so they stay true:

- the import paths map to folders exactly as ``pyproject.toml`` says and the design doc's
  table repeats, and every package folder is listed (a wheel would otherwise miss it);
- no module of the core (``mmxai/``) is longer than one sitting (about 400 lines);
- no import cycle between mmxai's modules (module-level imports);
- every paper is cited once, in ``mmxai/citations.py``: no BibTeX elsewhere in the code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
MAX_CORE_LINES = 400


def package_dirs() -> dict[str, str]:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return setup["package-dir"]


def module_files() -> dict[str, Path]:
    """Import path -> file, for every module of every mapped package."""
    modules = {}
    for package, folder in package_dirs().items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def test_every_package_folder_is_listed_for_the_wheel():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in setup["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == set(setup["packages"])


def test_the_design_doc_maps_every_import_path_to_its_folder():
    design = (ROOT / "docs" / "design.md").read_text()
    rows = dict(re.findall(r"^\| `([\w/]+)/` \| `([\w.]+)` \|", design, flags=re.M))
    assert {package: folder for folder, package in rows.items()} == package_dirs()


def test_core_modules_read_in_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "mmxai").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_CORE_LINES}
    assert not long, f"over {MAX_CORE_LINES} lines: {long}"


def imports_of(path: Path, package: str, known: set[str]) -> set[str]:
    """The mmxai modules ``path`` imports at module level (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1]
                                    + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in child.names]
            else:
                continue
            found |= {n for n in names if n in known}
    return found


def test_no_import_cycle():
    modules = module_files()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imports_of(path, package, known) - {name}
    # Packages' __init__ re-exports are entry points, not dependencies of their children.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if modules[nxt].name == "__init__.py":
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node)


BIBTEX_ENTRY = re.compile(r"@(inproceedings|article|misc|book|incollection|techreport)\{")


def test_every_paper_is_cited_once_in_the_citations_module():
    from mmxai.citations import BIBTEX

    elsewhere = [str(p.relative_to(ROOT)) for p in module_files().values()
                 if p.name != "citations.py" and BIBTEX_ENTRY.search(p.read_text())]
    assert not elsewhere, f"BibTeX outside mmxai/citations.py: {elsewhere}"
    keys = [re.match(r"@\w+\{([^,]+),", entry).group(1) for entry in BIBTEX.values()]
    assert keys == list(BIBTEX)  # each entry under its own key


def test_every_registered_plugin_cites_known_papers():
    from mmxai.citations import BIBTEX
    from mmxai.registry import manager

    known = set(BIBTEX.values())
    for kind in ("methods", "metrics", "datasets"):
        for name, cls in manager().items(kind).items():
            if cls.__module__.startswith("mmxai.") and cls.citation:
                for entry in cls.citation.split("\n\n"):
                    assert entry in known, (kind, name)
