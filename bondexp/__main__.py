"""`python -m bondexp` and the `bondexp` script: a thin Hydra shell around `bondexp.app.run`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra._internal.hydra import Hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bondexp.config import register_configs, resolve_run_dir
from bondexp.errors import BondexpError


def _share_config_store() -> None:
    """Let Hydra's config repositories share the one ConfigStore instead of deep-copying it.

    Hydra 1.3 deep-copies its config repository, ConfigStore included, for every group it lists
    (about 70 times for `--help`) and every compose: half of `--help`'s time. The store is a
    singleton that loading never mutates (`ConfigStore.load` hands out copies), and Hydra's own
    fix (facebookresearch/hydra#2928, unreleased in 1.3) stops holding a copy of it the same way.
    """
    ConfigStore.__deepcopy__ = lambda self, memo: self


_share_config_store()
register_configs()


def _compose_once() -> None:
    """Make a run compose its config once: the mode check's config is handed to the run.

    Before it dispatches, Hydra 1.3 composes the whole config only to read ``hydra.mode``
    (``Hydra.get_mode``, in MULTIRUN mode), drops it and composes again to run (hydra#3440): a
    third of a finished resume's time. Here the check composes in RUN mode, which yields the same
    config whenever it succeeds (RUN mode only adds checks: no sweep values, no missing group),
    and the run's compose right after it gets that config. When the check fails (a sweep, a config
    error) Hydra's own check runs, so sweeps and error messages are Hydra's.
    """
    hydras_check = Hydra.get_mode

    def get_mode(self: Hydra, config_name: str | None, overrides: list[str]) -> RunMode | None:
        try:
            cfg = self.config_loader.load_configuration(config_name=config_name, overrides=list(overrides), run_mode=RunMode.RUN)
        except Exception:  # what Hydra's own check catches; it reports nothing either
            return hydras_check(self, config_name, overrides)
        _hand_over(self.config_loader, cfg, config_name=config_name, overrides=list(overrides))
        return cfg.hydra.mode

    Hydra.get_mode = get_mode


def _hand_over(loader, cfg: DictConfig, *, config_name: str | None, overrides: list[str]) -> None:
    """Have ``loader``'s next compose return ``cfg`` if it asks for the same run; later ones compose as usual.

    Hydra's run appends ``hydra.mode=RUN`` when the config sets no mode; that override is applied here.
    """
    compose = loader.load_configuration

    def load_configuration(**kwargs):
        del loader.load_configuration  # once: a sweep's job configs are composed by Hydra
        extra = kwargs["overrides"][len(overrides):]
        if (kwargs["run_mode"] != RunMode.RUN or kwargs["config_name"] != config_name
                or kwargs["overrides"][:len(overrides)] != overrides or extra not in ([], ["hydra.mode=RUN"])):
            return compose(**kwargs)
        if extra:
            cfg.hydra.mode = RunMode.RUN
            cfg.hydra.overrides.hydra.append(extra[0])
        return cfg

    loader.load_configuration = load_configuration


def _with_resumed_overrides(argv: list[str]) -> list[str]:
    """``argv`` with a resumed run's original overrides put before today's, so Hydra composes once.

    ``resume=<folder>`` (or ``last``) continues that run with the overrides it was started with
    (``<folder>/.hydra/overrides.yaml``); overrides given today come after them and win.
    """
    resume = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("resume=")]
    if not resume or resume[-1] in ("null", "None", ""):
        return argv
    saved = Path(resolve_run_dir(resume[-1])) / ".hydra" / "overrides.yaml"
    original = [str(o) for o in OmegaConf.load(saved)] if saved.exists() else []
    first = next(i for i, a in enumerate(argv) if i and not a.startswith("-") and ("=" in a or a.startswith("~")))
    return [*argv[:first], *original, *argv[first:]]


@hydra.main(version_base="1.3", config_path="pkg://bondexp.conf", config_name="config")
def _main(cfg: DictConfig) -> None:
    # imported here, not at the top: `--help` and `--cfg job` never get this far and need none of it
    from bondexp.app import resume_command, run

    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") != "resume"]
    run_dir = Path(hc.runtime.output_dir)
    workers = None
    if hc.mode == RunMode.MULTIRUN:
        # sweep jobs share the machine: each runs its steps on its share of the workers
        n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=1) or 1
        workers = max(1, int(cfg.workers) // max(1, int(n_jobs)))
    try:
        result = run(cfg, run_dir=run_dir, model_choice=hc.runtime.choices.get("model"), overrides=overrides,
                     workers=workers)
    except BondexpError as err:
        print(f"bondexp: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished steps are checkpointed; resume with:\n  {resume_command(run_dir)}", file=sys.stderr)
        sys.exit(130)
    if result is not None and not result.ok:
        sys.exit(1)


def main() -> None:
    """Console-script entry point."""
    try:
        sys.argv = _with_resumed_overrides(sys.argv)
    except BondexpError as err:
        print(f"bondexp: error: {err}", file=sys.stderr)
        sys.exit(2)
    _compose_once()
    _main()


if __name__ == "__main__":
    main()
