"""Check the floors of the architecture: a module of ``src/modelsteal`` imports only its own floor or lower ones.

Floors, lowest first (docs/architecture.md)::

    0  data, models, training, and the shared helpers (devices, outputs, determinism, _registry, ...)
    1  defenses, detectors, metrics
    2  blackbox (PredictionAPI: a model behind a defense and a detector), tabular (victims that answer queries)
    3  attacks, ownership (verifiers query a suspect through a BlackBox), serve, interop
    4  experiment, audit
    5  cli (and the package's own __init__ / __main__)

Every ``import`` counts, also one inside a function (a lazy import is still a dependency), but not one under
``if TYPE_CHECKING:`` (an annotation only). ``from modelsteal import X`` counts as importing the part ``X`` when
``X`` is one, and ``__version__`` is on every floor. A subpackage or module
that is in no floor is an error too, so a new one is placed on purpose. Prints one line per violation and exits 1
when there is any::

    python scripts/check_layout.py            # make layout
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "modelsteal"
FLOORS: list[tuple[str, ...]] = [
    ("data", "models", "training", "_registry", "_simplex", "_extras", "determinism", "devices", "outputs",
     "batching"),
    ("defenses", "detectors", "metrics"),
    ("blackbox", "tabular"),
    ("attacks", "ownership", "serve", "interop"),
    ("experiment", "audit"),
    ("cli", "__init__", "__main__"),
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def part(module: str) -> str | None:
    """The top-level part of ``modelsteal.<part>...`` (``None`` for another package)."""
    bits = module.split(".")
    if bits[0] != PACKAGE:
        return None
    return bits[1] if len(bits) > 1 else "__init__"


def _annotation_only(tree: ast.AST) -> set[int]:
    """The ids of the import nodes under ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return skip


def imported(tree: ast.AST, *, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of ``tree``, relative imports resolved against ``module``."""
    found: list[tuple[int, str]] = []
    skip = _annotation_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != PACKAGE:
                found.append((node.lineno, target))
                continue
            for a in node.names:  # `from modelsteal import training` imports a part by name
                if a.name in FLOOR:
                    found.append((node.lineno, f"{PACKAGE}.{a.name}"))
                elif a.name != "__version__":
                    found.append((node.lineno, PACKAGE))
    return found


def check(src: Path) -> list[str]:
    root = src / PACKAGE
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parts[:-1] if is_package else rel.parts)
        mine = part(module) if module != PACKAGE else "__init__"
        if mine not in FLOOR:
            problems.append(f"{path}: {mine!r} is on no floor (add it to FLOORS in scripts/check_layout.py)")
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in imported(tree, module=module, is_package=is_package):
            other = part(target)
            if other is None or other == mine:
                continue
            if other not in FLOOR:
                problems.append(f"{path}:{line}: imports {target}, on no floor")
            elif FLOOR[other] > FLOOR[mine]:
                problems.append(f"{path}:{line}: {mine} (floor {FLOOR[mine]}) imports {target} "
                                f"(floor {FLOOR[other]})")
    return problems


def main() -> int:
    src = Path(__file__).resolve().parents[1] / "src"
    problems = check(src)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} import(s) break the floors", file=sys.stderr)
        return 1
    print(f"layout ok: {sum(1 for _ in (src / PACKAGE).rglob('*.py'))} modules keep their floors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
