"""The library's layers, checked by walking its imports (every import, at the top of a module or
inside a function): no import circle, and no room importing a room above it. The maths is at the
bottom, jobs and what the user reads above it, commands at the top (pages, outside the package, may
import anything). The rule is the README's Development section's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "valuation"
FOUNDATION = ("errors", "storage", "config", "runs", "progress")  # every room may import these
# Rooms from the bottom up: a module may import its own room and the rooms below it, never above.
LAYERS = ("foundation", "games", "data", "lm", "runtime", "rewards", "training", "evaluation", "views",
          "validation", "jobs", "report", "commands")
NUMPY_ONLY = ("games",)  # rooms that import no model library: the maths runs without torch
MODEL_LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "safetensors", "ray", "streamlit")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """The room of a module of the package: its subpackage, or the foundation, or the command line."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in FOUNDATION:
        return "foundation"
    if parts[0] in ("cli", "__main__"):
        return "commands"
    return parts[0]


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(source: str, package: str, known: set[str]) -> tuple[set[str], set[str]]:
    """(the package's modules that `source`, a module of `package`, imports; the outside packages it
    imports), wherever in the file: at the top, inside a function, under TYPE_CHECKING."""
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from package import module` names a module; `from module import name` names the module
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target for alias in node.names]
        else:
            continue
        for name in names:
            if name == "valuation" or name.startswith("valuation."):
                inside.add(name)
            else:
                outside.add(name.split(".")[0])
    return inside, outside


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = set(modules())
    graph, outside = {}, {}
    for module, path in modules().items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        inside, others = imports(path.read_text(encoding="utf-8"), package, known)
        graph[module] = {m for m in inside if m in known and m != module}
        outside[module] = others
    return graph, outside


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each as a loop to name."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_sits_in_a_known_room() -> None:
    unknown = sorted({room(m) for m in modules()} - set(LAYERS))
    assert not unknown, f"rooms {unknown} are not in LAYERS: add them where they belong in the layering"


def test_no_import_circle() -> None:
    found = circles(import_graph()[0])
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_room_imports_a_room_above_it() -> None:
    graph, _ = import_graph()
    upward = [f"{module} ({room(module)}) imports {target} ({room(target)})"
              for module, targets in graph.items() for target in sorted(targets)
              if LAYERS.index(room(target)) > LAYERS.index(room(module))]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_maths_imports_no_model_library() -> None:
    _, outside = import_graph()
    heavy = [f"{module} imports {library}" for module, libraries in outside.items() if room(module) in NUMPY_ONLY
             for library in sorted(libraries & set(MODEL_LIBRARIES))]
    assert not heavy, "\n".join(heavy)


def test_the_walk_finds_what_it_looks_for() -> None:
    """The checks above can fail: made-up imports are found wherever they stand, and a circle is named."""
    source = ("from ..games import shapley\nimport torch\n\ndef f():\n    from .figures import colors\n"
              "    from valuation.jobs.registry import JOBS\n")
    known = {"valuation.games.shapley", "valuation.views.figures", "valuation.jobs.registry"}
    inside, outside = imports(source, "valuation.views", known)
    assert inside == known and outside == {"torch"}
    assert LAYERS.index(room("valuation.jobs.registry")) > LAYERS.index(room("valuation.views.figures"))  # upward
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert room("valuation.config") == "foundation" and room("valuation.cli") == "commands"


def test_the_command_line_starts_without_the_model_stack() -> None:
    """`python -m valuation --help` stays fast: no job, command or flag imports torch until work runs."""
    probe = ("import sys; from valuation.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
