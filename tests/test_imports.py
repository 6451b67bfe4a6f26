"""tftune's modules import in layers that only point down: no import circle, function-local imports counted.

A circle (say models -> runs -> recipe -> models) means a low layer knows a high one: it breaks
when either moves, and a function-local import only hides it until the function runs.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tftune"


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node, modules):
    """The tftune modules an `import` or `from ... import` statement imports (tftune uses no relative imports)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    base = node.module or ""
    found = [base] if base in modules else []
    # `from tftune import api` imports the submodule `tftune.api`
    return found + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]


def import_graph():
    """`{module: set of tftune modules it imports}`, every import statement counted, wherever it is.

    Imports of the package `tftune` itself are left out: every `tftune.x` import runs it first, so
    they add nothing, and it is the facade over the API (the top layer), not a layer of its own.
    """
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_imported(node, files))
        graph[module] = edges - {module, "tftune"}
    return graph


def find_cycle(graph):
    """One import circle as a list of modules (the first repeated at the end), or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*stack[stack.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_graph_sees_function_local_and_from_package_imports():
    graph = import_graph()
    assert not [path for path in PACKAGE.rglob("*.py") if "from ." in path.read_text(encoding="utf-8")]
    assert "tftune.models.preset_files" in graph["tftune.models.backbone"]  # inside from_preset
    assert "tftune.distribute" in graph["tftune.pretraining"]  # `from tftune import distribute`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_tftune_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_models_import_nothing_above_them():
    above = ("tftune.runs", "tftune.recipe", "tftune.pretrained_models", "tftune.api", "tftune.cli",
             "tftune.pretraining", "tftune.finetuning", "tftune.model_configs", "tftune.convert")
    graph = import_graph()
    for module in (name for name in graph if name.startswith("tftune.models")):
        assert not graph[module] & set(above), f"{module} imports {sorted(graph[module] & set(above))}"
