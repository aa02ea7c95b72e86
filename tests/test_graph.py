"""Graph validation happens at build time, with messages that name the step to fix."""

import re

import pytest

from bondexp.errors import GraphError
from bondexp.graph import Step, build_graph

W = "runner_steps.work"


def S(name, needs=(), group="g", target=W, config=None):
    return Step(name, target, needs=needs, group=group, config=config or {})


@pytest.mark.parametrize(
    "steps, message",
    [
        ([], "The step graph is empty"),
        ([S("a"), S("a")], "Duplicate step name 'a'"),
        ([S("basic"), S("evaluate", needs=("basics",))], "Step 'evaluate' needs 'basics', which is not a step.*Did you mean 'basic'"),
        ([S("a", needs=("b",)), S("b", needs=("c",)), S("c", needs=("a",))], r"cycle: (a|b|c) -> .* -> .*"),
        ([S("a", needs=("a",))], "cycle: a -> a"),
        ([S("a", target="no_such_module_xyz.fn")], "Cannot import module 'no_such_module_xyz'"),
        ([S("a", target="runner_steps.wrok")], "has no function 'wrok'.*Did you mean 'runner_steps.work'"),
        ([S("a", target="runner_steps.NOT_CALLABLE")], "must be a callable. Got int"),
        ([S("a", target="work")], "dotted path 'package.module.function'"),
        ([S("a", config={"x": object()})], "config of step 'a' must be plain JSON"),
        ([S("")], "A step name must be a non-empty string"),
        ([S("x/y")], "A step name must be a non-empty string without '/'"),
        (["a"], "build_graph takes Step objects. Got str"),
    ],
)
def test_invalid_graphs_fail_at_build_time(steps, message):
    with pytest.raises(GraphError, match=message):
        build_graph(steps)


def test_needs_given_as_one_string_is_rejected():
    with pytest.raises(GraphError, match="must be a list of step names"):
        Step("a", W, needs="b")


def test_cycle_message_names_only_the_steps_on_the_cycle():
    steps = [S("root"), S("a", needs=("root", "c")), S("b", needs=("a",)), S("c", needs=("b",))]
    with pytest.raises(GraphError) as info:
        build_graph(steps)
    cycle = re.search(r"cycle: (.*)\. Remove", str(info.value)).group(1).split(" -> ")
    assert set(cycle) == {"a", "b", "c"} and cycle[0] == cycle[-1]


def test_order_groups_and_downstream():
    graph = build_graph(
        [
            S("evaluate", needs=("basic", "enhanced"), group="report"),
            S("basic", group="ml"),
            S("enhanced", group="ml"),
            S("drift", needs=("evaluate",), group="report"),
            S("regime", group="risk"),
        ]
    )
    order = graph.order
    assert set(order) == {"evaluate", "basic", "enhanced", "drift", "regime"}
    for step in graph:
        assert all(order.index(n) < order.index(step.name) for n in step.needs)
    # ties keep declaration order
    assert order[:3] == ("basic", "enhanced", "regime")
    assert graph.groups == {"ml": ("basic", "enhanced"), "risk": ("regime",), "report": ("evaluate", "drift")}
    assert graph.downstream(["basic"]) == {"evaluate", "drift"}
    assert graph.downstream(["regime"]) == set()
    assert graph.downstream(["basic", "evaluate"]) == {"evaluate", "drift"}
    assert graph.dependents("evaluate") == {"drift"}
    assert len(graph) == 5 and graph["basic"].group == "ml"


def test_needs_list_is_stored_as_tuple():
    step = Step("b", W, needs=["a"])
    assert step.needs == ("a",)


def test_targets_are_checked_without_importing_their_modules(tmp_path, monkeypatch):
    """A dry run or a finished resume builds the graph: that must not import the steps' libraries."""
    (tmp_path / "unimported_steps.py").write_text("raise ImportError('imported while building the graph')\n\ndef fit(ctx):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    build_graph([S("a", target="unimported_steps.fit")])
    with pytest.raises(GraphError, match="has no function 'fti'.*Did you mean 'unimported_steps.fit'"):
        build_graph([S("a", target="unimported_steps.fti")])
    with pytest.raises(GraphError, match="Cannot import module 'no_such_package_xyz.mod'"):
        build_graph([S("a", target="no_such_package_xyz.mod.fn")])
