"""Tests of bondexp.plots: every plot renders to PNG bytes without touching the disk."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from bondexp import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_timeline_draws_the_steps_that_ran_and_nothing_when_none_did():
    steps = [
        SimpleNamespace(name="a", status="ran", worker="w0/1", started=10.0, ended=12.0),
        SimpleNamespace(name="b", status="failed", worker="w10/2", started=11.0, ended=11.5),
        SimpleNamespace(name="c", status="reused", worker="", started=None, ended=None),
    ]
    assert plots.timeline_png(steps).startswith(PNG)
    assert plots.timeline_png(steps[2:]) is None


def test_workers_sort_by_number():
    assert sorted(["w10/1", "w2/1", "parent"], key=plots._worker_sort_key) == ["w2/1", "w10/1", "parent"]


def test_rmse_ci_draws_rows_without_intervals():
    rows = [{"model": "m", "rmse": 1.0, "rmse_ci_low": 0.9, "rmse_ci_high": 1.1}, {"model": "oracle", "rmse": 0.5}]
    assert plots.rmse_ci_png(rows, references=("oracle",)).startswith(PNG)


def test_warm_up_loads_the_agg_canvas_and_plots_never_use_pyplot():
    code = (
        "import sys; from bondexp import plots; plots.warm_up(render=True); "
        "plots.rmse_ci_png([{'model': 'm', 'rmse': 1.0}]); "
        "print('matplotlib.backends.backend_agg' in sys.modules, 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]  # the canvas the first plot needs is loaded; no pyplot, no figures to close


def test_a_plot_draws_its_figure_once_after_the_layout(monkeypatch):
    """tight_layout measures the figure; savefig then draws it once. The layout engine tight_layout
    leaves behind made savefig draw the whole figure a second time first (a quarter of drift's plot)."""
    import matplotlib.figure

    draws = []
    draw = matplotlib.figure.Figure.draw
    monkeypatch.setattr(matplotlib.figure.Figure, "draw", lambda self, renderer: draws.append(1) or draw(self, renderer))
    rows = [{"model": "m", "rmse": 1.0, "rmse_ci_low": 0.9, "rmse_ci_high": 1.1}]
    assert plots.rmse_ci_png(rows).startswith(PNG)
    assert len(draws) == 1
