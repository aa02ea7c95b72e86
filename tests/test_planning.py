"""Planning as pure functions: priorities, the crash-suspect policy and the ETA, on tiny graphs."""

import pytest

from bondexp.graph import Step, build_graph
from bondexp.planning import FIRST_RUN_SECONDS, CrashSuspects, eta_s, priorities, ready_order, step_kind, submittable


def chain_and_leaf():
    """a -> b (a long chain) beside a short independent leaf c."""
    return build_graph(
        [
            Step("a", "runner_steps.work", needs=(), group="g", config={}),
            Step("b", "runner_steps.work", needs=("a",), group="g", config={}),
            Step("c", "runner_steps.work", needs=(), group="g", config={}),
        ]
    )


def test_priorities_are_the_longest_expected_path_to_the_end():
    graph = chain_and_leaf()
    assert priorities(graph, {"a": 1.0, "b": 2.0, "c": 2.5}) == {"a": 3.0, "b": 2.0, "c": 2.5}


def test_unknown_durations_count_as_the_mean_known():
    graph = chain_and_leaf()
    assert priorities(graph, {"a": None, "b": 2.0, "c": 4.0})["a"] == pytest.approx(3.0 + 2.0)


@pytest.mark.parametrize(
    ("ready", "suspects", "running", "allowed"),
    [
        (["a", "c"], set(), [], ["a", "c"]),  # no crash: everything ready may start
        (["a", "c"], {"c"}, [], ["c"]),  # a ready suspect starts alone once the workers are idle
        (["a", "c"], {"c"}, ["b"], []),  # ... and waits while anything runs
        (["a", "c"], {"b"}, ["b"], []),  # nothing starts beside a running suspect
        (["a", "c"], {"b"}, [], ["a", "c"]),  # a suspect that finished holds nothing back
    ],
)
def test_a_crash_suspect_runs_alone(ready, suspects, running, allowed):
    assert submittable(ready, suspects=suspects, running=running) == allowed


def test_a_lone_lost_step_is_the_culprit_and_several_become_suspects():
    suspects = CrashSuspects()
    assert suspects.culprit(["a"]) == "a" and suspects.names == set()
    assert suspects.culprit(["a", "c"]) is None and suspects.names == {"a", "c"}
    assert suspects.submittable(["a", "b"], running=[]) == ["a"]


def test_ready_steps_sort_by_priority_then_declaration_order():
    graph = chain_and_leaf()
    assert sorted(["c", "a"], key=ready_order(graph, {"a": 1.0, "b": 2.0, "c": 2.5})) == ["a", "c"]
    assert sorted(["c", "a"], key=ready_order(graph, {"a": 1.0, "b": 1.0, "c": 2.0})) == ["a", "c"]  # a tie: a is declared first
    assert sorted(["c", "a"], key=ready_order(graph, {"a": 1.0, "b": 1.0, "c": 2.5})) == ["c", "a"]


def test_an_unknown_duration_counts_as_its_kinds_first_run_seconds_else_as_the_mean_known():
    forest = {"estimator": {"_target_": "sklearn.ensemble.RandomForestRegressor", "n_estimators": 5}}
    graph = build_graph(
        [
            Step("forest", "runner_steps.work", config=forest),
            Step("mine", "runner_steps.work", config={"estimator": {"_target_": "my_models.Mine"}}),
            Step("known", "runner_steps.work", config={"estimator": {"_target_": "sklearn.ensemble.RandomForestRegressor"}}),
            Step("report", "runner_steps.work", needs=("forest", "mine", "known")),
        ]
    )
    assert [step_kind(graph[n]) for n in ("forest", "mine", "report")] == ["RandomForestRegressor", "Mine", "runner_steps.work"]
    rank = priorities(graph, {"forest": None, "mine": None, "known": 3.0, "report": 1.0})
    assert rank == {"forest": FIRST_RUN_SECONDS["RandomForestRegressor"] + 1.0, "mine": 2.0 + 1.0, "known": 4.0, "report": 1.0}


def test_on_a_first_run_a_step_joining_models_goes_before_a_lone_model():
    """No durations known: tune (after the ml models) and a risk model tie on priority; tune goes first."""
    graph = build_graph(
        [
            Step("ml1", "runner_steps.work", needs=(), group="ml", config={}),
            Step("ml2", "runner_steps.work", needs=(), group="ml", config={}),
            Step("risk", "runner_steps.work", needs=(), group="risk", config={}),
            Step("tune", "runner_steps.work", needs=("ml1", "ml2"), group="report", config={}),
            Step("evaluate", "runner_steps.work", needs=("ml1", "ml2", "risk", "tune"), group="report", config={}),
        ]
    )
    unknown = dict.fromkeys(graph.order)
    assert priorities(graph, unknown)["risk"] == priorities(graph, unknown)["tune"]
    assert sorted(["risk", "tune"], key=ready_order(graph, unknown)) == ["tune", "risk"]


def test_eta_is_the_longer_of_the_critical_path_and_work_over_workers():
    graph = chain_and_leaf()
    expected = {"a": 1.0, "b": 2.0, "c": 2.5}
    # b waits on a (1 s left of a after 0 s): chain 3 s; work 5.5 s over 2 workers: 2.75 s.
    assert eta_s(graph, expected, pending={"b", "c"}, running_for={"a": 0.0}, concurrency=2) == pytest.approx(3.0)
    # One worker: all the work in turn, and a running step counts only what is left of it.
    assert eta_s(graph, expected, pending={"b", "c"}, running_for={"a": 0.5}, concurrency=1) == pytest.approx(5.0)
    # A step running past its expected time counts as nothing left, never negative.
    assert eta_s(graph, expected, pending=set(), running_for={"c": 9.0}, concurrency=1) == 0.0


def test_eta_is_unknown_until_every_step_left_has_a_duration_and_zero_when_nothing_is_left():
    graph = chain_and_leaf()
    assert eta_s(graph, {"a": 1.0, "b": None, "c": 2.0}, pending={"b"}, running_for={}, concurrency=1) is None
    assert eta_s(graph, {"a": 1.0, "b": None, "c": 2.0}, pending=set(), running_for={}, concurrency=1) == 0.0


def test_the_duration_history_is_kept_per_data_config_and_worker_count(tmp_path, capsys):
    """A quick run on other data (or with another worker count) must not set this run's ETA and order."""
    from hydra import compose, initialize_config_module

    from bondexp.app import run
    from bondexp.config import register_configs

    register_configs()

    def dry_run(*overrides: str, workers: int = 1) -> str:
        with initialize_config_module(config_module="bondexp.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=["model=[factor]", f"cache_dir={tmp_path}", "progress=false", *overrides])
        run(cfg, run_dir=tmp_path / ("plan" if cfg.dry_run else "run"), workers=workers)  # a plan reads no other run's folder
        return capsys.readouterr().out

    timed = "~steps.tune", "~steps.drift", "eval.n_bootstrap=20"
    dry_run("data=small", *timed)  # a real run: it records factor's and evaluate's durations
    assert dry_run("data=small", *timed, "dry_run=true", "seed=7").count(" s\n") == 2  # the seed aside, the same data
    assert "  ~" not in dry_run("data=small", *timed, "data.n_observations=2000", "dry_run=true")
    assert "  ~" not in dry_run("data=small", *timed, "dry_run=true", workers=2)
