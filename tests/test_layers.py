"""The node's layers, as its imports show them (README, "Code layout").

Every module under satsrouter/ is parsed, never imported, and every import in it counts, at
the top or inside a function: a function-local import is a dependency all the same, only a
later one. The layers, top to bottom:

    wiring (cli, app, node, settings, …) → http → admin → endpoints → lightning → billing, ecash
    → upstream, market → store → shared vocabulary (errors, faults, usage, units, jsonbody)

A module may import its own package and anything in a lower layer. Within one layer a
package may use another only where SIDEWAYS says so; the wiring layer, the composition root,
uses its own modules freely. No two modules may import each other, directly or round a
loop. Imports under `if TYPE_CHECKING:` count for every rule, cycles included: they never
run, but the loop HOUSE.md named (ecash/wallet.py ⇄ ecash/receiving.py, through the then
private `_Slot`) ran through one, and a loop of types still makes two modules one concept.
"""

from __future__ import annotations

import ast
import functools
import graphlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "satsrouter"

# Top to bottom. A unit is a subpackage of satsrouter or a module at its top level;
# "__init__" is the package's own module (it holds __version__).
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "wiring",
        frozenset(
            {"__main__", "cli", "app", "workers", "node", "settings", "logs", "identity", "metrics"}
        ),
    ),
    ("http", frozenset({"http"})),
    # The operator's side: admin authentication, live settings, usage figures.
    ("admin", frozenset({"admin"})),
    ("endpoints", frozenset({"endpoints"})),
    # Funding and payouts over Lightning: built on billing's balances and payouts and on
    # the wallet's mint protocol; billing reaches it only through a protocol it is handed.
    ("lightning", frozenset({"lightning"})),
    ("money", frozenset({"billing", "ecash"})),
    ("sources", frozenset({"upstream", "market"})),
    ("store", frozenset({"store"})),
    ("vocabulary", frozenset({"__init__", "errors", "faults", "usage", "units", "jsonbody"})),
)
# The composition root wires its own modules together in any direction (no cycle still).
OPEN_LAYERS = frozenset({"wiring"})
# (importer, imported) between two units of one layer. Billing pays and refunds with the
# node's wallet, which knows nothing of billing; a body that is not a JSON object is an
# ApiError; the catalogue names each provider's models as that provider's configuration says.
SIDEWAYS = frozenset({("billing", "ecash"), ("jsonbody", "errors"), ("market", "upstream")})
# Upward imports the code still makes, each with why. Listed, not allowed in general: the
# test also fails when one of them is gone, so that this list only shrinks.
KNOWN_BACK_ARROWS = {
    ("http", "node"): "handlers take the components they use from `Node` (HOUSE.md, item 7)",
}
# Test doubles live outside the product (dev/satsrouter_dev); the node never imports them.
DEV_PACKAGE = "satsrouter_dev"


@dataclass(frozen=True)
class Import:
    """One import statement's use of one module."""

    importer: str
    imported: str  # dotted; the longest module of the node the name reaches
    line: int

    def __str__(self) -> str:
        return f"{self.importer} (line {self.line}) imports {self.imported}"


def _within(name: str, modules: Collection[str]) -> str | None:
    """The longest of `modules` that `name` is or lies inside; None when it is none of ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(
    module: str, source: str, is_package: bool, modules: Collection[str]
) -> Iterator[Import]:
    """Every import in `source` of a module in `modules`, or of DEV_PACKAGE, wherever it
    stands. `from a import b` imports `a.b` when that is a module, else `a`."""
    package = module if is_package else module.rpartition(".")[0]

    def names(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            return
        base = node.module or ""
        if node.level:  # relative: `from .. import x` climbs one package above `package`
            parts = package.split(".")
            parts = parts[: len(parts) - node.level + 1] + ([base] if base else [])
            base = ".".join(parts)
        for alias in node.names:
            yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in names(node):
                target = _within(name, modules)
                if target is None and name.partition(".")[0] == DEV_PACKAGE:
                    target = name
                if target is not None and target != module:
                    yield Import(module, target, node.lineno)


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


@functools.cache
def all_imports() -> tuple[Import, ...]:
    files = _module_files()
    found: list[Import] = []
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        found.extend(imports_of(module, path.read_text(), is_package, files))
    return tuple(found)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer_of() -> dict[str, tuple[int, str]]:
    return {unit: (rank, name) for rank, (name, units) in enumerate(LAYERS) for unit in units}


def _ours(found: Import) -> bool:
    return found.imported.partition(".")[0] == PACKAGE


def test_the_reader_sees_every_kind_of_import() -> None:
    """The parser itself: top-level, function-local, relative and TYPE_CHECKING imports."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import satsrouter.store.tx\n"
        "from satsrouter import faults\n"
        "from . import tokens\n"
        "from ..billing.quote import Quote\n"
        "if TYPE_CHECKING:\n"
        "    from satsrouter.node import Node\n"
        "def later():\n"
        "    from satsrouter.usage import count_tokens\n"
        "    import satsrouter_dev.mint\n"
    )
    modules = {
        "satsrouter",
        "satsrouter.faults",
        "satsrouter.node",
        "satsrouter.usage",
        "satsrouter.store.tx",
        "satsrouter.ecash",
        "satsrouter.ecash.tokens",
        "satsrouter.ecash.wallet",
        "satsrouter.billing.quote",
    }
    found = {i.imported for i in imports_of("satsrouter.ecash.wallet", source, False, modules)}
    assert found == {
        "satsrouter.store.tx",
        "satsrouter.faults",
        "satsrouter.ecash.tokens",
        "satsrouter.billing.quote",
        "satsrouter.node",
        "satsrouter.usage",
        "satsrouter_dev.mint",
    }


def test_every_part_of_the_node_has_a_layer() -> None:
    """A new package or top-level module takes its place in LAYERS before it is imported."""
    units = {unit_of(module) for module in _module_files()}
    placed = set(_layer_of())
    assert units - placed == set(), "add these to a layer in LAYERS"
    assert placed - units == set(), "these are in LAYERS but no longer in satsrouter/"


def _imports_between(importer: str, imported: str) -> list[str]:
    """Imports by modules of unit `importer` of modules of unit `imported`."""
    return [
        str(i)
        for i in all_imports()
        if _ours(i) and unit_of(i.importer) == importer and unit_of(i.imported) == imported
    ]


def test_upstream_imports_nothing_from_billing() -> None:
    assert _imports_between("upstream", "billing") == []


def test_endpoints_import_nothing_from_http() -> None:
    assert _imports_between("endpoints", "http") == []


def test_each_layer_imports_only_those_below_it() -> None:
    layer_of = _layer_of()
    wrong: list[str] = []
    known_seen: set[tuple[str, str]] = set()
    for found in all_imports():
        if not _ours(found):
            continue
        pair = (unit_of(found.importer), unit_of(found.imported))
        (rank, layer), (to_rank, _) = layer_of[pair[0]], layer_of[pair[1]]
        if pair[0] == pair[1] or to_rank > rank:
            continue
        if to_rank == rank and (layer in OPEN_LAYERS or pair in SIDEWAYS):
            continue
        if pair in KNOWN_BACK_ARROWS:
            known_seen.add(pair)
            continue
        wrong.append(str(found))
    assert wrong == []
    gone = set(KNOWN_BACK_ARROWS) - known_seen
    assert gone == set(), "no longer imported: remove these from KNOWN_BACK_ARROWS"


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for found in all_imports():
        if _ours(found):
            graph.setdefault(found.importer, set()).add(found.imported)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as cycle:
        raise AssertionError(f"import cycle: {' -> '.join(cycle.args[1])}") from None


def test_the_node_imports_no_test_double() -> None:
    wrong = [str(i) for i in all_imports() if i.imported.partition(".")[0] == DEV_PACKAGE]
    assert wrong == []
