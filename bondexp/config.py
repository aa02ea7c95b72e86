"""The config schema (registered in Hydra's ConfigStore) and the semantic checks made before any work.

The dataclasses make Hydra reject a misspelled key or a wrong type at compose time with its own
message; `validate_config` then checks what types cannot say (ranges, paths, names), so a bad value
fails before a single step runs.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, overload

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from bondexp.data import check_split_fractions
from bondexp.errors import ConfigError, check_keys, did_you_mean
from bondexp.feature_names import FEATURES
from bondexp.runs import RESUMED_RECORD
from bondexp.tuning.space import class_name, space_key

#: Keys of a model file that configure the step rather than the estimator.
MODEL_STEP_KEYS = ("group", "features", "early_stopping")
#: The output folders this process's ``bondexp.run_dir`` and ``bondexp.new_dir`` resolvers named while
#: they did not exist, each with the top folder of its layout (``outputs``): Hydra makes each for this
#: command, which may remove it again when it ends before any work (:func:`bondexp.runs.discard_unused`).
NEW_RUN_DIRS: dict[Path, Path] = {}


@dataclass
class SplitConf:
    train: float = 0.6  # earliest share of the observation months
    validation: float = 0.2  # the next share
    test: float = 0.2  # the latest share


@dataclass
class SyntheticDataConf:
    source: str = "synthetic"  # synthetic | csv | parquet
    n_observations: int = 50_000  # bond-month rows of the panel
    n_months: int = 72  # monthly observation dates
    drift: bool = True  # force the test months into stress or crisis; false = stationary market
    n_sectors: int = 8  # sectors, 1 to 10
    noise_scale: float = 0.35  # price points of noise in a calm month for a median-size bond
    min_regime_months: int = 8  # months of stress and of crisis the training months must hold
    split: SplitConf = field(default_factory=SplitConf)
    on_invalid: str = "raise"  # raise | drop


@dataclass
class FileColumnsConf:
    bond_id: str = "bond_id"
    obs_date: str = "obs_date"
    issue_date: str = "issue_date"
    maturity_date: str = "maturity_date"
    coupon_rate: str = "coupon_rate"
    frequency: str = "frequency"
    day_count: str = "day_count"
    rating: str = "rating"
    sector: str = "sector"
    clean_price: str = "clean_price"
    issue_size: str = "issue_size"
    face_value: str = "face_value"


@dataclass
class FileDataConf:
    source: str = "csv"  # csv | parquet
    path: str = MISSING  # bond file: one row per bond and observation date
    curve_path: str = MISSING  # zero curves, long: date, tenor, zero_rate
    spread_path: str | None = None  # optional spreads, long: date, rating, spread
    columns: FileColumnsConf = field(default_factory=FileColumnsConf)  # our column -> the file's
    coupon_unit: str = "decimal"  # decimal | percent
    price_unit: str = "per_100"  # per_100 | per_face
    face_value: float | None = None  # face value of every bond for price_unit per_face
    split: SplitConf = field(default_factory=SplitConf)
    on_invalid: str = "raise"  # raise | drop


@dataclass
class EarlyStoppingConf:
    enabled: bool = True  # stop iterative estimators once the held-out score stalls
    patience: int = 10  # iterations without improvement before stopping (n_iter_no_change)
    validation_fraction: float = 0.1  # share of the training rows held out to decide
    tol: float = 1e-4  # the smallest improvement that counts


@dataclass
class EvalConf:
    sample_pct: float = 100.0  # percent of the test split evaluated, stratified by rating (100 = all rows)
    n_bootstrap: int = 500  # bootstrap resamples for the RMSE confidence interval
    confidence: float = 0.95  # level of the bootstrap confidence interval


@dataclass
class DriftConf:
    psi_warn: float = 0.1  # population stability index that warns
    psi_alert: float = 0.25  # population stability index that alerts
    ks_alpha: float = 0.05  # Kolmogorov-Smirnov significance level after the correction
    correction: str = "holm"  # multiple-testing correction of KS p-values: holm | bonferroni | none
    n_bins: int = 10  # quantile bins taken from the training split
    psi_floor: float = 1e-4  # share given to an empty bin so PSI stays finite


@dataclass
class TuneConf:
    target: str | None = None  # model to tune; null = the best ML model with a search space
    n_trials: int = 16  # trials in the study (finished trials of a resumed study count)
    batch_size: int = 4  # trials asked together, run at once and told back in trial order
    timeout: float | None = 600.0  # safety cap in seconds: no batch starts that would end after it; null = none
    storage: str | None = None  # null = Optuna journal file in the run folder; or a database URL
    search_space: dict[str, Any] = field(default_factory=dict)  # model -> param -> {low, high, log} | {choices}
    class_search_space: dict[str, Any] = field(default_factory=dict)  # estimator class -> param -> range (group search_space)


@dataclass
class BacktestConf:
    origins: Any = None  # null = no backtest; a count (origins `horizon` months apart, ending at the data) or ['YYYY-MM', ...]
    horizon: int = 3  # months scored after each origin
    window: Any = "expanding"  # expanding (every month before the origin) | a number of months before it
    calibration_months: int = 6  # latest months before the origin that calibrating models (tail_risk, bayesian) calibrate on


@dataclass
class ExecutorConf:
    name: str = "local"  # local (processes; workers=1 runs in-process) | dask
    address: str | None = None  # dask scheduler address; null starts a LocalCluster


@dataclass
class TrackingConf:
    name: str = "none"  # none | mlflow
    uri: str = "sqlite:///mlflow.db"  # MLflow tracking URI (relative paths from the launch folder)
    experiment: str = "bondexp"  # MLflow experiment name
    log_models: bool = False  # log and register every fitted model as bondexp-<model>


@dataclass
class StepConf:
    _target_: str = MISSING  # module-level function that runs the step
    needs: list[str] = field(default_factory=list)  # steps it reads; `models` = every model step, a group name = its models
    needs_if_chosen: list[str] = field(default_factory=list)  # steps it reads when they are in the graph (tune)
    group: str = "report"  # label shown in the plan and the summary
    config: Any = None  # the config slice handed to the function


@dataclass
class BondexpConf:
    workers: int = 2  # steps (and tuning trials) running at once; 1 runs everything in-process
    seed: int = 0  # one seed for data, splits, estimators and the tuning sampler
    progress: bool = True  # one tqdm bar; plain lines when not a terminal
    dry_run: bool = False  # print the plan (steps, needs, what a resume reuses) and stop
    resume: str | None = None  # a run folder to continue in place, or `last`
    cache_dir: str = "~/.cache/bondexp"  # feature cache and step-duration history, shared across runs
    data: Any = MISSING  # the data group
    model: Any = None  # a model file without a `# @package models.<name>` header lands here
    models: dict[str, Any] = field(default_factory=dict)  # chosen models, one entry per model file
    feature_sets: dict[str, list[str]] = field(default_factory=dict)  # named feature lists models refer to
    early_stopping: EarlyStoppingConf = field(default_factory=EarlyStoppingConf)
    eval: EvalConf = field(default_factory=EvalConf)
    drift: DriftConf = field(default_factory=DriftConf)
    tune: TuneConf = field(default_factory=TuneConf)
    backtest: BacktestConf = field(default_factory=BacktestConf)
    executor: ExecutorConf = field(default_factory=ExecutorConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    steps: dict[str, StepConf] = field(default_factory=dict)  # the report steps that follow the models


def latest_run(outputs: Path = Path("outputs")) -> Path:
    """The newest folder under ``outputs/`` (Hydra's ``<date>/<time>`` layout) where a run's steps began.

    See :func:`bondexp.runs.steps_began`: a ``dry_run`` or a config error leaves a folder with nothing to resume.
    """
    from bondexp.runs import steps_began

    runs = sorted(p for p in outputs.glob("*/*") if steps_began(p))
    if not runs:
        raise ConfigError(f"The 'resume' config key is 'last' but there is no run folder under {outputs.resolve()}.")
    return runs[-1]


@overload
def resolve_run_dir(resume: str) -> str: ...
@overload
def resolve_run_dir(resume: None) -> None: ...
def resolve_run_dir(resume: str | None) -> str | None:
    """The folder `resume` names (``last``: the newest run), or None for a fresh run.

    A folder that does not exist is an error here, before Hydra would create it and run afresh in it.
    """
    if resume is None:
        return None
    if resume != "last" and not Path(resume).is_dir():
        _fail("resume", "a run folder or 'last'", resume)
    return str(latest_run() if resume == "last" else Path(resume))


def _new_run_dir(stamp: datetime, root: str = "outputs") -> str:
    """``<root>/<date>/<time>`` of ``stamp``, noted in :data:`NEW_RUN_DIRS` when it does not exist yet."""
    folder = f"{root.rstrip('/')}/{stamp.strftime('%Y-%m-%d/%H-%M-%S')}"
    if not Path(folder).exists():
        NEW_RUN_DIRS[Path(folder).resolve()] = Path(Path(root).parts[0]).resolve()
    return folder


def register_configs() -> None:
    """Register the schema and the resolvers `conf/config.yaml` uses; safe to call twice.

    ``hydra.run.dir`` and ``hydra.output_subdir`` follow ``resume``: a resumed run works in its own
    folder and keeps that folder's original ``.hydra/`` (config and overrides) untouched.
    """
    store = ConfigStore.instance()
    store.store(name="bondexp_schema", node=BondexpConf)
    # The data schemas sit beside bondexp_schema, outside the data group: --help lists a group's
    # entries as choices, and a schema is not data to choose. A data file pulls its own in.
    store.store(name="bondexp_synthetic_data_schema", node=SyntheticDataConf)
    store.store(name="bondexp_file_data_schema", node=FileDataConf)
    stamp = datetime.now()
    resolvers: dict[str, Callable[..., Any]] = {
        "bondexp.run_dir": lambda resume: resolve_run_dir(resume) or _new_run_dir(stamp),
        "bondexp.new_dir": lambda root: _new_run_dir(stamp, root),  # predict's outputs/predict/<date>/<time>
        # a dry run writes no config: a resumed run's folder got a .hydra/resumed-<time>/ for a plan;
        # nor does a command in a folder another run is using: it overwrote that run's config (the run
        # lock refuses the command right after, bondexp.app.run)
        # a command into a folder that holds a run's record (hydra.run.dir=<it>) is a later attempt, as a resume is:
        # bad input stopped it after Hydra had overwritten that run's .hydra/, and its resume then failed the same way
        "bondexp.output_subdir": lambda resume, dry_run=False, output_dir=None: (
            None
            if dry_run or (output_dir is not None and _in_use_elsewhere(output_dir))
            else ".hydra"
            if resume is None and not (output_dir is not None and (Path(output_dir) / ".hydra" / "overrides.yaml").is_file())
            else stamp.strftime(f".hydra/{RESUMED_RECORD}%Y%m%d-%H%M%S")
        ),
        "bondexp.if_null": lambda value, default: default if value is None else value,  # ${bondexp.if_null:${a},b}
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=True)


def _in_use_elsewhere(run_dir: str) -> bool:
    from bondexp.checkpoints import in_use_elsewhere  # not at the top: --help and a dry run need none of it

    return in_use_elsewhere(run_dir)


def _fail(key: str, expected: str, got: Any) -> None:
    raise ConfigError(f"The '{key}' config key must be {expected}. Got {got!r} instead.")


def _check_tune_target(cfg: DictConfig, models: dict[str, dict[str, Any]]) -> None:
    """A named tune target must be a chosen model with a search space, by name or by class; say so before any work.

    With ``tune.target`` null, having nothing to tune is not an error: the step is skipped.
    """
    target = cfg.tune.target
    if target is None:
        return
    if target not in models:
        raise ConfigError(
            f"The 'tune.target' config key must name a trained model, one of {sorted(models)}. "
            f"Got {target!r} instead.{did_you_mean(target, models)}"
        )
    by_name = plain_dict(cfg.tune.search_space)
    by_class = plain_dict(cfg.tune.class_search_space)
    if space_key(target, models[target], by_name=by_name, by_class=by_class) is None:
        raise ConfigError(
            f"The 'tune.search_space.{target}' config key must map parameters of model {target!r} to ranges to tune "
            f"it, since its class {class_name(models[target])!r} has no default space in tune.class_search_space. "
            f"Models with a space by name: {sorted(k for k, v in by_name.items() if v)}; "
            f"classes with one: {sorted(k for k, v in by_class.items() if v)}."
        )


def _check_feature_names(cfg: DictConfig, models: Mapping[str, Mapping[str, Any]]) -> None:
    """Every name a feature set or a model's ``features`` list gives is a feature or a feature set: name
    the key holding one that is neither, before the data loads.

    The check on the data came after it had loaded, and blamed the model's ``features`` for a typo in
    a ``feature_sets`` entry it used (``all``).
    """
    sets = plain_dict(cfg.feature_sets)
    for set_name, items in sets.items():  # lists of text: the schema's Dict[str, List[str]]
        _refuse_unknown_features(f"feature_sets.{set_name}", items, sets)
    for name, spec in models.items():
        if isinstance(spec.get("features"), list):
            _refuse_unknown_features(f"{model_key(cfg, name)}.features", spec["features"], sets)


def _refuse_unknown_features(key: str, items: Sequence[str], sets: Mapping[str, Any]) -> None:
    unknown = [item for item in items if item not in FEATURES and item not in sets]
    if unknown:
        raise ConfigError(
            f"The '{key}' config key names {unknown}, which the data does not have (nor is it a feature set); its features are "
            f"{list(FEATURES)}, the feature sets {sorted(sets)}.{did_you_mean(unknown[0], [*FEATURES, *sets])}"
        )


def _check_space_names(cfg: DictConfig, models: dict[str, dict[str, Any]]) -> None:
    """Refuse a ``tune.search_space.<name>`` whose name is a misspelt chosen model's; say so before any work.

    The tune step looks a space up by the model's name, so ``enhancd`` was ignored and ``enhanced``
    tuned over its class's default space. A space for a model not in this run stays allowed: a sweep
    over ``model=`` or an experiment file may hold spaces for several. So only a name that is close
    to a chosen model's and is no model file's name (:func:`_model_file_names`) is refused.
    """
    strays = [str(name) for name in cfg.tune.search_space if name not in models]
    if not strays:
        return
    files = _model_file_names(cfg)
    for name in strays:
        if did_you_mean(name, models) and name not in files:  # close to a chosen model: the closest of every name
            raise ConfigError(
                f"The 'tune.search_space.{name}' config key must be named after a model: one of the chosen "
                f"{sorted(models)}, or another model file. Got {name!r}, the name of neither, instead."
                f"{did_you_mean(name, [*models, *sorted(files)])}"
            )


def _check_needs(cfg: DictConfig, models: dict[str, dict[str, Any]]) -> None:
    """Every ``steps.<name>.needs`` item names a step, ``models`` or a model group; a typo gets the closest of them.

    Said by the graph, ``needs: [modles]`` listed the steps only, with no suggestion, though
    ``models`` and a group name (``ml``, ``risk``, a model file's ``group``) are needs too.
    """
    from bondexp.pipeline import ALL_MODELS, MODEL_GROUPS  # here: pipeline imports this module

    steps = [*models, *(str(name) for name in cfg.steps)]
    groups = sorted({*MODEL_GROUPS, *(str(spec.get("group", "ml")) for spec in models.values())})
    backtest = cfg.backtest.origins is not None  # its steps (backtest, <model>@<month>) join the graph later
    for name, decl in cfg.steps.items():
        for need in decl.needs:
            if need == ALL_MODELS or need in steps or need in groups or (backtest and (need == "backtest" or "@" in need)):
                continue
            raise ConfigError(
                f"The 'steps.{name}.needs' config key must list steps, '{ALL_MODELS}' (every model step) or model groups. "
                f"Got {need!r} instead, which is none of the steps {steps}, nor '{ALL_MODELS}', nor a group {groups}."
                f"{did_you_mean(need, [ALL_MODELS, *groups, *steps])}"  # a tie (rsk: risk, tail_risk) goes to a group
            )


def collect_models(cfg: DictConfig, *, choice: str | None = None) -> dict[str, dict[str, Any]]:
    """Return ``{model name: plain model spec}`` for the chosen models.

    Model files normally carry a ``# @package models.<name>`` header. A file without one (a
    user's ``my_lasso.yaml`` holding just ``_target_`` and parameters) lands under ``model``;
    it is named after the group choice (``model=my_lasso``).
    """
    if choice is not None:
        _check_model_files(cfg, choice)
    models = {str(name): plain_dict(spec) for name, spec in cfg.models.items()}
    loose = cfg.get("model")
    if loose is not None and len(loose) > 0:
        name = (choice or "model").strip("[]")
        if "_target_" not in loose and (choice is None or name in models):  # `+model.<key>` beside a file with the header
            raise ConfigError(
                "The 'model' config key holds keys without a '_target_': "
                f"{sorted(loose)}. A model file needs '_target_' (the estimator class)."
            )
        if "_target_" not in models.get(name, {"_target_": None}):  # `+models.my_lasso.alpha=1` for a header-less my_lasso
            raise ConfigError(
                f"The model file {name} has no '# @package models.{name}' header, so its keys are set as "
                f"model.<key> ({', '.join(f'model.{k}' for k in models[name])}), not models.{name}.<key>."
            )
        if "," not in name and (models or _is_set_file(name, cfg)):
            # Hydra merged the header-less members of a set file into one `model`, or one beside headered ones
            raise ConfigError(
                f"The 'model' choice {name} is a set of model files, and some have no '# @package models.<name>' "
                "header; in a set every file needs that header, so that each lands under its own name (Hydra "
                "merged the header-less ones into one model)."
            )
        if "," in name:
            # a file with the header lands under models.<its name>: the listed names missing there are the suspects
            suspects = [f"model/{listed}.yaml" for listed in (part.strip() for part in name.split(",")) if listed not in models]
            raise ConfigError(
                f"The 'model' choice {choice} lists a model file without a '# @package models.<name>' header"
                f"{' (' + ', '.join(suspects) + ')' if suspects else ''}; in a list every file needs that header, "
                "so that each lands under its own name."
            )
        if "_target_" not in loose:  # the header-less file chosen: it was named only as "the 'model' config key"
            raise ConfigError(
                f"The model file model/{name}.yaml (model={name}) has no '_target_', the estimator class "
                f"(as in '_target_: sklearn.linear_model.Lasso'); it holds {sorted(loose)}."
            )
        models[name] = plain_dict(loose)
    return models


def _check_model_files(cfg: DictConfig, choice: str) -> None:
    """Refuse, before any work, a model choice whose files Hydra would silently misread.

    - ``model=my_lasso.yaml``: Hydra finds the file, but a header-less one was named ``my_lasso.yaml``
      (its tuned model ``my_lasso.yaml_tuned``).
    - a chosen option that more than one config folder holds: Hydra takes the first in its search
      path, where ``hydra.searchpath`` entries always come after bondexp's own ``conf/`` (Hydra appends
      them: ``ConfigLoaderImpl._process_config_searchpath``), so a user's ``model/basic.yaml`` was ignored.
    - two chosen files whose ``# @package models.<name>`` headers write the same model: Hydra merged
      them into one (a RandomForest's ``n_estimators`` on a Lasso, or an ExtraTrees that failed in its step).

    The files are found as Hydra finds them, in the run's config sources; set files are followed
    into their defaults lists.
    """
    options = [part.strip() for part in choice.strip("[]").split(",") if part.strip()]
    for option in options:
        if option.endswith((".yaml", ".yml")):
            stem = option.rsplit(".", 1)[0]
            raise ConfigError(
                f"The 'model' choice {option} names a file with its extension; choose the option without it: "
                f"model={choice.replace(option, stem)}."
            )
    repo = _config_repository(cfg)
    if repo is None:
        return
    writers: dict[str, list[tuple[str, str]]] = {}  # model key (models.<name>) -> [(option, file)] writing it
    seen: set[str] = set()
    queue = list(options)
    while queue:
        option = queue.pop(0)
        if option in seen:  # model=[basic,basic]: one file, chosen twice
            continue
        seen.add(option)
        path = f"model/{option}"
        holders = [source for source in repo.get_sources() if source.is_config(path)]
        loaded = [source.load_config(path) for source in holders] if len(holders) > 1 else []
        if len({(repr(result.header), repr(result.config)) for result in loaded}) > 1:
            files = " and ".join(f"{source.full_path()}/{path}.yaml" for source in holders)
            raise ConfigError(
                f"The 'model' option {option} is a file in more than one config folder ({files}), and Hydra reads only the "
                f"first (bondexp's own conf/ comes before any hydra.searchpath folder); rename yours, e.g. to "
                f"model/my_{option}.yaml (with '# @package models.my_{option}' if it has a header), and choose model=my_{option}."
            )
        if not holders:
            continue  # Hydra has refused it already (it names the options)
        result = repo.load_config(path)  # the file Hydra read (the first source that holds it), its defaults list parsed
        if result is None:
            continue
        package = str(result.header.get("package") or "_group_")
        package = package.removeprefix("_global_.")
        if package not in ("_group_", "model", "_global_"):
            writers.setdefault(package, []).append((option, f"{holders[0].full_path()}/{path}.yaml"))
        for entry in result.defaults_list or []:  # a set file's members (plain entries; others are left to Hydra)
            member = getattr(entry, "path", None)
            if isinstance(member, str) and member != "_self_" and entry.package is None and not member.startswith("/"):
                queue.append(member)
    for package, written_by in writers.items():
        if len(written_by) > 1:
            name = package.removeprefix("models.")
            rename = next(option for option, _ in reversed(written_by) if option != name)  # not the file named after it
            raise ConfigError(
                f"The chosen model files {' and '.join(f for _, f in written_by)} both write the model {name!r} "
                f"('# @package {package}'), and Hydra would merge them into one; rename the header of one of them, "
                f"e.g. '# @package models.{rename}' in model/{rename}.yaml."
            )


def _config_repository(cfg: DictConfig) -> Any:
    """Hydra's config repository over the run's config sources (``hydra.runtime.config_sources``), or None outside Hydra.

    A relative ``file://`` source is read from the folder Hydra composed in (``hydra.runtime.cwd``):
    with ``hydra.job.chdir=true`` the run works in its own folder by now, where it found no model file.
    """
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.hydra_config import HydraConfig

    runtime = OmegaConf.select(cfg, "hydra.runtime", default=None)
    if runtime is None or runtime.get("config_sources") is None:
        if not HydraConfig.initialized():
            return None
        runtime = HydraConfig.get().runtime
    search_path = ConfigSearchPathImpl()
    for source in runtime.config_sources:
        path = str(source.path)
        if source.schema == "file" and not Path(path).is_absolute():
            path = str(Path(runtime.cwd) / path)
        search_path.append(str(source.provider), f"{source.schema}://{path}")
    return ConfigRepository(config_search_path=search_path)


def launch_dir(cfg: DictConfig | None = None) -> Path:
    """The folder the run was launched in, against which relative paths are read (Hydra's ``to_absolute_path``).

    With ``hydra.job.chdir=true`` the run works in its own folder: an existing ``data.path`` given
    relative to the launch folder was refused as missing. A resumed run (``cfg.resume``) reads them
    from the folder it was first launched in, as its saved overrides meant them: resumed from
    another folder, a relative ``data.path`` was refused as missing, and a relative SQLite
    ``tune.storage`` started a new, empty study there.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return Path.cwd()
    runtime = HydraConfig.get().runtime
    first = saved_launch_dir(Path(runtime.output_dir)) if cfg is not None and cfg.get("resume") is not None else None
    return first or Path(runtime.cwd)


def saved_launch_dir(run_dir: Path) -> Path | None:
    """The folder the run in ``run_dir`` was first launched in (``.hydra/hydra.yaml``'s ``runtime.cwd``), if saved."""
    hydra_file = Path(run_dir) / ".hydra" / "hydra.yaml"
    launched_in = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd") if hydra_file.is_file() else None
    return Path(launched_in) if launched_in else None


#: A SQLAlchemy SQLite URL (``sqlite:///file``, ``sqlite+pysqlite:///file?...``): its scheme, file and query.
_SQLITE_URL = re.compile(r"^(sqlite(?:\+\w+)?:///)([^?]*)(.*)$")


@overload
def absolute_sqlite_url(url: str, base: Path) -> str: ...
@overload
def absolute_sqlite_url(url: None, base: Path) -> None: ...
def absolute_sqlite_url(url: str | None, base: Path) -> str | None:
    """``url`` with a relative SQLite file made absolute against ``base``; any other URL, or None, as given.

    ``sqlite:///tuning.db`` names a file relative to whichever process opens it: a Dask worker's
    folder, a ``hydra.job.chdir=true`` run's own folder, a resume launched elsewhere. Read against
    the launch folder, as ``data.path`` is, the study and the MLflow store stay one file.
    """
    match = _SQLITE_URL.match(url) if isinstance(url, str) else None
    if match is None:
        return url
    scheme, path, rest = match.groups()
    if path in ("", ":memory:") or path.startswith("file:"):
        return url
    return f"{scheme}{Path(base) / Path(path).expanduser()}{rest}"  # an absolute path stays as it is


def model_key(cfg: DictConfig, name: str) -> str:
    """The config key a model's settings are given under: ``models.<name>``, or ``model`` for a header-less file.

    A file without a ``# @package`` header lands under ``model`` (see :func:`collect_models`): errors
    naming ``models.my_lasso.alpha`` sent its user to a key Hydra refuses ("not in struct").
    """
    return f"models.{name}" if name in cfg.models else "model"


def _model_file_names(cfg: DictConfig) -> set[str]:
    """The names of the model files in the run's config sources, as Hydra finds them (:func:`_config_repository`,
    ``pkg://`` ones too): each file's name, and the name in its ``# @package models.<name>`` header."""
    from hydra.core.object_type import ObjectType

    repo = _config_repository(cfg)
    names: set[str] = set()
    for option in repo.get_group_options("model", ObjectType.CONFIG) if repo is not None else []:
        names.add(option)
        result = repo.load_config(f"model/{option}")
        package = str((result.header.get("package") if result is not None else None) or "")
        if package.startswith("models."):
            names.add(package.removeprefix("models."))
    return names


def _is_set_file(choice: str, cfg: DictConfig) -> bool:
    """Whether the model option ``choice``, as Hydra finds it in the run's config sources, has a defaults list (a set of model files)."""
    repo = _config_repository(cfg)
    result = repo.load_config(f"model/{choice}") if repo is not None and repo.config_exists(f"model/{choice}") else None
    return bool(result is not None and result.defaults_list)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: The early-stopping settings (:class:`EarlyStoppingConf`), what each must be, and the test of it.
_EARLY_STOPPING: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "enabled": ("true or false", lambda v: isinstance(v, bool)),
    "patience": ("a whole number, at least 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "validation_fraction": ("a number in (0, 1)", lambda v: _is_number(v) and 0 < v < 1),
    "tol": ("a number, 0 or more", lambda v: _is_number(v) and v >= 0),
}


def _check_early_stopping(key: str, block: dict[str, Any]) -> None:
    """The settings of the early-stopping block ``key`` (the top-level one or a model file's), each by its key.

    A model file's block is a plain mapping the schema does not type: ``patience: abc`` failed the
    check before the first step with a 59-line traceback (``int('abc')``), and ``patiance: 3`` was ignored.
    """
    for name, (expected, ok) in _EARLY_STOPPING.items():
        if name in block and not ok(block[name]):
            _fail(f"{key}.{name}", expected, block[name])


def _check_schema_keys(node: DictConfig, key: str) -> None:
    """Refuse a key the schema of section ``key`` does not declare (:func:`bondexp.errors.check_keys`), in it and its sections
    (``key`` empty: the sections of the whole config, ``hydra`` aside).

    A section typed by a dataclass (``eval``, ``drift``, ``tune``, ``backtest``, ``early_stopping``,
    ``executor``, ``tracking``, ``data`` and its ``split`` and ``columns``, each ``steps.<name>``)
    refuses a misspelled key at compose time, but Hydra's ``+key=value`` adds it anyway: it was
    ignored (``+tune.n_trial=3`` ran 16 trials) or failed its step once the models had trained.
    Sections of free keys (``models``, ``feature_sets``, ``steps``, ``tune.search_space``,
    ``tune.class_search_space``) are plain mappings: their own keys are left to the checks that read
    them, and only the typed sections inside them (``steps.<name>``) are checked.
    """
    names = [str(name) for name in node.keys()]
    schema = OmegaConf.get_type(node)
    if key and schema is not None and is_dataclass(schema):  # the top level's keys: validate_config's own message
        check_keys(key, names, [f.name for f in fields(schema)])
    for name in names:
        if (key or name != "hydra") and not OmegaConf.is_interpolation(node, name) and not OmegaConf.is_missing(node, name):
            child = node[name]
            if isinstance(child, DictConfig):
                _check_schema_keys(child, f"{key}.{name}" if key else name)


def validate_config(cfg: DictConfig, *, models: dict[str, dict[str, Any]]) -> None:
    """Check what the schema's types cannot; raise ConfigError naming the key and the bad value."""
    known = {f.name for f in fields(BondexpConf)} | {"hydra"}
    unknown = [str(key) for key in cfg.keys() if key not in known]
    if unknown:
        raise ConfigError(
            f"The config has key(s) {unknown} that bondexp does not read: a '+key=value' override, or a "
            "config file without its '# @package' header, adds keys no step sees."
            f"{did_you_mean(unknown[0], sorted(known - {'hydra'}))}"
        )
    _check_schema_keys(cfg, "")
    if cfg.workers < 1:
        _fail("workers", "at least 1", cfg.workers)
    if cfg.seed < 0:  # numpy's SeedSequence takes none below 0
        _fail("seed", "0 or more", cfg.seed)
    if "split" in cfg.data:
        check_split_fractions(plain_dict(cfg.data.split))
    if not 0 < cfg.eval.sample_pct <= 100:
        _fail("eval.sample_pct", "a percentage in (0, 100]", cfg.eval.sample_pct)
    if cfg.eval.n_bootstrap < 1:
        _fail("eval.n_bootstrap", "at least 1", cfg.eval.n_bootstrap)
    if not 0 < cfg.eval.confidence < 1:
        _fail("eval.confidence", "in (0, 1)", cfg.eval.confidence)
    _check_early_stopping("early_stopping", plain_dict(cfg.early_stopping))
    if not 0 <= cfg.drift.psi_warn <= cfg.drift.psi_alert:
        _fail("drift.psi_warn", f"between 0 and drift.psi_alert ({cfg.drift.psi_alert})", cfg.drift.psi_warn)
    if cfg.drift.n_bins < 2:
        _fail("drift.n_bins", "at least 2", cfg.drift.n_bins)
    if not 0 < cfg.drift.psi_floor < 1:
        _fail("drift.psi_floor", "in (0, 1)", cfg.drift.psi_floor)
    if not 0 < cfg.drift.ks_alpha < 1:
        _fail("drift.ks_alpha", "in (0, 1)", cfg.drift.ks_alpha)
    if cfg.drift.correction not in ("holm", "bonferroni", "none"):
        _fail("drift.correction", "one of ['holm', 'bonferroni', 'none']", cfg.drift.correction)
    if cfg.tune.n_trials < 1:
        _fail("tune.n_trials", "at least 1", cfg.tune.n_trials)
    if cfg.tune.batch_size < 1:
        _fail("tune.batch_size", "at least 1", cfg.tune.batch_size)
    if cfg.tune.timeout is not None and cfg.tune.timeout <= 0:
        _fail("tune.timeout", "a positive number of seconds or null", cfg.tune.timeout)
    if cfg.tune.storage is not None and "://" not in cfg.tune.storage:
        _fail("tune.storage", "null (a journal file in the run folder) or a database URL such as 'sqlite:///tuning.db'", cfg.tune.storage)
    if cfg.tracking.name not in ("none", "mlflow"):
        _fail("tracking.name", "one of ['none', 'mlflow'] (choose with tracking=mlflow)", cfg.tracking.name)
    if cfg.tracking.name == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "The 'tracking' config group is 'mlflow' but MLflow is not installed: pip install \".[mlflow]\" (or choose tracking=none)."
        )
    if cfg.executor.name == "dask" and importlib.util.find_spec("distributed") is None:
        raise ConfigError(
            "The 'executor' config group is 'dask' but Dask's 'distributed' package is not installed: "
            'pip install ".[dask]" (or choose executor=local).'
        )
    if not models:
        _fail("model", "a model, a list of models or a model set", "no model")
    if cfg.backtest.origins is not None:  # the other backtest keys are read only then; null keeps numpy unimported
        from bondexp.steps.backtest import check_backtest_config

        check_backtest_config(plain_dict(cfg.backtest))
    if "tune" in cfg.steps:
        _check_space_names(cfg, models)
        _check_tune_target(cfg, models)
    for name, spec in models.items():
        key = model_key(cfg, name)
        if "_target_" not in spec:
            _fail(f"{key}._target_", "the estimator's import path", None)
        if not isinstance(spec.get("group", "ml"), str):  # the plan, the summary and `needs: [ml]` read it as a name
            _fail(f"{key}.group", "a group name (text)", spec["group"])
        features = spec.get("features", "all")
        if not isinstance(features, (str, list)) or (isinstance(features, str) and features not in cfg.feature_sets):
            raise ConfigError(
                f"The '{key}.features' config key must name a feature set, one of "
                f"{sorted(cfg.feature_sets)}, or list features. Got {features!r} instead."
                f"{did_you_mean(features, cfg.feature_sets) if isinstance(features, str) else ''}"
            )
        if isinstance(features, list) and not all(isinstance(item, str) for item in features):
            _fail(f"{key}.features", "a list of feature names and feature-set names (text)", features)
        if "early_stopping" in spec:  # a model file's own block, over the top-level one
            block = spec["early_stopping"]
            if not isinstance(block, dict):
                _fail(f"{key}.early_stopping", f"a mapping of early-stopping settings ({', '.join(_EARLY_STOPPING)})", block)
            check_keys(f"{key}.early_stopping", list(block), [f.name for f in fields(EarlyStoppingConf)])
            _check_early_stopping(f"{key}.early_stopping", block)
    _check_feature_names(cfg, models)
    _check_needs(cfg, models)
    for key in ("path", "curve_path", "spread_path"):
        if key in cfg.data and OmegaConf.is_missing(cfg.data, key):
            _fail(f"data.{key}", "set to a file (data." + key + "=...)", "???")
        value = cfg.data.get(key)
        if value is not None and not (launch_dir(cfg) / Path(value).expanduser()).exists():
            _fail(f"data.{key}", "an existing file", value)
    if cfg.resume not in (None, "last") and not Path(cfg.resume).is_dir():
        _fail("resume", "a run folder or 'last'", cfg.resume)


def plain_dict(node: Any, *, resolve: bool = True) -> dict[str, Any]:
    """A config mapping as plain dicts and lists (interpolations resolved): what steps and checks take."""
    value = OmegaConf.to_container(node, resolve=resolve)
    if not isinstance(value, dict):
        raise TypeError(f"expected a config mapping, got {type(value).__name__}")
    return {str(key): item for key, item in value.items()}
