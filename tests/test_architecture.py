"""The layers of src/fastimg import downward only, and no module imports itself back.

    cli -> serve -> workflows, stream -> diffusion -> backends -> engine_folder, media -> ground

(stream, the real-time streams, sits beside workflows.)

Imports inside functions count too. ARCHITECTURE.md says what lives in each layer.
"""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
# Bottom first; a module may import its own layer and the ones below it.
LAYERS = (
    ("errors", "atomic", "machine", "gpu", "settings"),
    ("engine_folder", "media", "lora"),
    ("backends",),
    ("diffusion",),
    ("workflows", "stream"),
    ("serve", "comfyui"),
    ("cli", "__main__"),
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "fastimg").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module == "fastimg" or module.startswith("fastimg.")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(name, path):
            parts = imported.split(".")
            for k in range(len(parts), 0, -1):  # the longest known module
                candidate = ".".join(parts[:k])
                if candidate in modules:
                    if candidate != name and not name.startswith(candidate + "."):
                        targets.add(candidate)
                    break
        graph[name] = targets
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER_OF.get(parts[1]) if len(parts) > 1 else None


def test_every_module_is_in_a_layer():
    unplaced = [m for m in _modules() if m != "fastimg" and _layer(m) is None]
    assert not unplaced, f"add these to a layer in LAYERS and ARCHITECTURE.md: {unplaced}"


def test_imports_go_down_the_layers_only():
    upward = [
        f"{source} -> {target}"
        for source, targets in _graph().items()
        for target in targets
        if source != "fastimg" and target != "fastimg" and _layer(target) > _layer(source)
    ]
    assert not upward, upward


def test_no_import_cycles():
    graph, cycles = _graph(), []

    def reach(start: str) -> None:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for target in graph.get(node, ()):
                if target == start:
                    cycles.append(" -> ".join((*path, start)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, (*path, target)))

    for module in graph:
        if module != "fastimg":
            reach(module)
    assert not cycles, cycles[:5]


def test_export_bench_and_serve_never_import_the_cli():
    graph, root = _graph(), SRC.parent
    users = [m for m in graph if m.startswith("fastimg.serve") and _imports_cli(graph[m])]
    users += [
        str(path.relative_to(root))
        for folder in (root / "export", root / "bench")
        for path in folder.rglob("*.py")
        if _imports_cli(_imports(f"{folder.name}.module", path))
    ]
    assert not users, users


def _imports_cli(modules) -> bool:
    return any(m == "fastimg.cli" or m.startswith("fastimg.cli.") for m in modules)
