"""The step graph: named steps with needs, validated once when built, before any work runs.

A broken graph (duplicate name, unknown need, cycle, unimportable target, config that is
not JSON) fails here with a message naming the step, so a run never stops halfway for it.
Targets are checked without importing their modules where the source says enough, so building
the graph (a dry run, a resume that reuses every step) does not import scikit-learn and friends.
"""

from __future__ import annotations

import ast
import difflib
import functools
import graphlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bondexp.errors import GraphError, did_you_mean


@dataclass(frozen=True)
class Step:
    """One node of the graph: a module-level function and the plain config it gets.

    Parameters
    ----------
    name : str
        Unique step name; also the checkpoint and log file name.
    target : str
        Dotted path ``"package.module.function"`` of the step function.
    needs : tuple of str
        Names of the steps whose artifacts this step takes as inputs.
    group : str
        Display group (``ml``, ``risk``, ``report`` ...); scheduling ignores it.
    config : dict
        Resolved, JSON-able config slice passed to the function and hashed into the
        step's fingerprint.
    """

    name: str
    target: str
    needs: tuple[str, ...] = ()
    group: str = "default"
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept any iterable of names (a YAML list) but store a tuple so the step stays frozen.
        if isinstance(self.needs, str):
            raise GraphError(f"The 'needs' of step {self.name!r} must be a list of step names. Got the string {self.needs!r} instead.")
        object.__setattr__(self, "needs", tuple(self.needs))


def resolve_target(target: str) -> Callable[..., Any]:
    """Import ``"pkg.module.function"`` and return the function.

    Returns
    -------
    callable
        The attribute named by the last part of ``target``.

    Raises
    ------
    GraphError
        If the module cannot be imported, lacks the attribute, or the attribute is not callable.
    """
    module_name, attr = _split_target(target)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphError(f"Cannot import module {module_name!r} of target {target!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise _no_such_function(target, dir(module))
    if not callable(fn):
        raise GraphError(f"Target {target!r} must be a callable. Got {type(fn).__name__} instead.")
    return fn


def call_target(target: str, /, *args: Any) -> Any:
    """``resolve_target(target)(*args)``: a function named by its path, for a process that should import it only where it runs."""
    return resolve_target(target)(*args)


def check_target(target: str) -> None:
    """Raise what :func:`resolve_target` would, importing the module only when its source cannot tell.

    A module not yet imported is found with ``importlib.util.find_spec`` and its source read: a
    top-level ``def`` or ``class`` of that name settles it. Anything else (a name bound by an
    assignment or an import, a module without Python source, a module-level ``__getattr__`` or
    ``import *``) is imported and checked as :func:`resolve_target` does.
    """
    module_name, attr = _split_target(target)
    if module_name in sys.modules:
        resolve_target(target)
        return
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        raise GraphError(f"Cannot import module {module_name!r} of target {target!r}: {exc}") from exc
    if spec is None:
        raise GraphError(f"Cannot import module {module_name!r} of target {target!r}: No module named {module_name!r}")
    defined, bound, opaque = _top_level_names(spec.origin)
    if attr in defined:
        return
    if opaque or attr in bound:
        resolve_target(target)
        return
    raise _no_such_function(target, defined | bound)


def _split_target(target: str) -> tuple[str, str]:
    module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise GraphError(f"A step target must be a dotted path 'package.module.function'. Got {target!r} instead.")
    return module_name, attr


def _no_such_function(target: str, names: Iterable[str]) -> GraphError:
    module_name, attr = target.rsplit(".", 1)
    close = difflib.get_close_matches(attr, [n for n in names if not n.startswith("_")], n=3)
    hint = f" Did you mean {', '.join(repr(f'{module_name}.{c}') for c in close)}?" if close else ""
    return GraphError(f"Module {module_name!r} has no function {attr!r} (target {target!r}).{hint}")


@functools.cache
def _top_level_names(origin: str | None) -> tuple[frozenset[str], frozenset[str], bool]:
    """``(names of top-level defs and classes, other top-level bindings, opaque)`` of a module's source.

    ``opaque`` says the source cannot settle which names exist: no Python source, ``import *``
    or a module-level ``__getattr__``.
    """
    if not origin or not origin.endswith(".py"):
        return frozenset(), frozenset(), True
    try:
        with open(origin, "rb") as source:
            tree = ast.parse(source.read(), filename=origin)
    except (OSError, SyntaxError, ValueError):
        return frozenset(), frozenset(), True  # importing it gives the real error
    defined: set[str] = set()
    bound: set[str] = set()
    opaque = False
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(statement.name)
            continue
        # anything else may bind names, also inside `if`/`try` blocks: over-counting only means importing
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    opaque |= alias.name == "*"
                    bound.add(alias.asname or alias.name.split(".")[0])
    return frozenset(defined), frozenset(bound), opaque or "__getattr__" in defined


class Graph:
    """A validated step graph; build it with :func:`build_graph`.

    Attributes
    ----------
    steps : dict of str to Step
        Steps by name, in declaration order.
    order : tuple of str
        A topological order that keeps declaration order wherever the needs allow.
    groups : dict of str to tuple of str
        Step names per group, in topological order.
    """

    def __init__(self, steps: Mapping[str, Step], order: tuple[str, ...]):
        self.steps = dict(steps)
        self.order = order
        self.groups: dict[str, tuple[str, ...]] = {}
        for name in order:
            group = self.steps[name].group
            self.groups[group] = self.groups.get(group, ()) + (name,)
        self._dependents: dict[str, set[str]] = {name: set() for name in order}
        for step in self.steps.values():
            for need in step.needs:
                self._dependents[need].add(step.name)

    def __getitem__(self, name: str) -> Step:
        return self.steps[name]

    def __iter__(self) -> Iterator[Step]:
        return (self.steps[name] for name in self.order)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Graph({len(self)} steps: {', '.join(self.order)})"

    def dependents(self, name: str) -> frozenset[str]:
        """Steps that need ``name`` directly."""
        return frozenset(self._dependents[name])

    def downstream(self, names: Iterable[str]) -> set[str]:
        """Every step that needs one of ``names``, directly or through others.

        Returns
        -------
        set of str
            The transitive dependents; a name in ``names`` is included only if it also
            depends on another of them.
        """
        seen: set[str] = set()
        stack = [d for n in names for d in self._dependents[n]]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(self._dependents[name])
        return seen


def build_graph(steps: Iterable[Step]) -> Graph:
    """Validate steps and return the graph the runner schedules.

    Parameters
    ----------
    steps : iterable of Step
        The steps, in declaration order (ties in the schedule keep this order).

    Returns
    -------
    Graph

    Raises
    ------
    GraphError
        On an empty graph, a duplicate name, an unknown need (with close matches),
        a cycle (naming the steps on it), a target that does not exist or is not callable, or a
        config that cannot be written as JSON (it is hashed into the fingerprint).
    """
    by_name: dict[str, Step] = {}
    for step in steps:
        if not isinstance(step, Step):
            raise GraphError(f"build_graph takes Step objects. Got {type(step).__name__} instead.")
        if not isinstance(step.name, str) or not step.name or "/" in step.name or step.name.startswith("."):
            raise GraphError(f"A step name must be a non-empty string without '/' that does not start with '.'. Got {step.name!r} instead.")
        if step.name in by_name:
            raise GraphError(f"Duplicate step name {step.name!r}: each step needs a unique name.")
        by_name[step.name] = step
    if not by_name:
        raise GraphError("The step graph is empty: declare at least one step.")

    for step in by_name.values():
        for need in step.needs:
            if need not in by_name:
                raise GraphError(
                    f"Step {step.name!r} needs {need!r}, which is not a step. "
                    f"Known steps: {sorted(by_name)}.{did_you_mean(need, by_name, n=3)}"
                )

    order = _topological_order(by_name)
    for step in by_name.values():
        check_target(step.target)
        try:
            json.dumps(step.config, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise GraphError(
                f"The config of step {step.name!r} must be plain JSON data (dict, list, str, "
                f"number, bool, None) because it is hashed into the fingerprint: {exc}"
            ) from exc
    return Graph(by_name, order)


def _topological_order(by_name: Mapping[str, Step]) -> tuple[str, ...]:
    """Kahn's order via graphlib, taking ready steps in declaration order so it is deterministic."""
    position = {name: i for i, name in enumerate(by_name)}
    sorter = graphlib.TopologicalSorter({name: step.needs for name, step in by_name.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        raise GraphError(f"The step graph has a cycle: {' -> '.join(cycle)}. Remove one of these needs.") from exc
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return tuple(order)
