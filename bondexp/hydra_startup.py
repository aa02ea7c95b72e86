"""Work Hydra 1.3 does on every start that bondexp's commands do not need, skipped (see README, Start-up).

Four changes, each to a private Hydra or OmegaConf function whose behaviour stays what they
document: the ConfigStore is shared instead of deep-copied, a run composes its config once instead
of twice, `--help` lists only the config groups its template shows, and config files are parsed by
libyaml (C) instead of PyYAML's pure-Python parser. The compose that checks the run's mode also
answers an override it cannot apply (a key the config does not have, a group option that does not
exist, a value of the wrong type) with bondexp's one line (exit 2) naming it
(:func:`override_error_message`). `install()` makes them; calling it again changes nothing.
Each names the issue or code it works around, so it can go when Hydra or OmegaConf fix it.
"""

from __future__ import annotations

import functools
import re
import string
import sys
from dataclasses import fields, is_dataclass
from typing import Any

import omegaconf._utils
import yaml
from hydra._internal.hydra import Hydra
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from hydra.errors import CompactHydraException, ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ConfigTypeError, ValidationError

from bondexp.errors import did_you_mean

#: Hydra's and OmegaConf's own functions, kept before `install` replaces them (the replacements call or mirror them).
_HYDRA_GET_MODE, _HYDRA_GET_HELP = Hydra.get_mode, Hydra.get_help
_OMEGACONF_YAML_LOADER = omegaconf._utils.get_yaml_loader


#: The command its error lines name (``bondexp: error: ...``), set by :func:`install`.
_program = "bondexp"


def install(program: str = "bondexp") -> None:
    """Apply the four changes below (idempotent); ``program`` names the command in its error line."""
    global _program
    _program = program
    _share_config_store()
    Hydra.get_mode = _get_mode  # type: ignore[method-assign]  # replacing Hydra's private method is the point
    Hydra.get_help = _get_help  # type: ignore[method-assign]  # likewise
    if yaml.__with_libyaml__:
        omegaconf._utils.get_yaml_loader = libyaml_loader


def _share_config_store() -> None:
    """Let Hydra's config repositories share the one ConfigStore instead of deep-copying it.

    Hydra 1.3 deep-copies its config repository, ConfigStore included, for every group it lists
    (about 70 times for `--help`) and every compose: half of `--help`'s time. The store is a
    singleton that loading never mutates (`ConfigStore.load` hands out copies), and Hydra's own
    fix (facebookresearch/hydra#2928, unreleased in 1.3) stops holding a copy of it the same way.
    """
    ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]  # added to Hydra's class on purpose


def _get_mode(self: Hydra, config_name: str | None, overrides: list[str]) -> RunMode | None:
    """``Hydra.get_mode`` that hands its composed config to the run, so a run composes once.

    Before it dispatches, Hydra 1.3 composes the whole config only to read ``hydra.mode`` (in
    MULTIRUN mode), drops it and composes again to run (hydra#3440): a third of a finished resume's
    time. Here the check composes in RUN mode, which yields the same config whenever it succeeds
    (RUN mode only adds checks: no sweep values, no missing group), and the run's compose right
    after it gets that config. When the check fails (a sweep, a config error) Hydra's own check
    runs, so sweeps and error messages are Hydra's, but for an override it cannot apply, which ends
    the command here with :func:`override_error_message`'s line and exit 2.
    """
    try:
        cfg = self.config_loader.load_configuration(config_name=config_name, overrides=list(overrides), run_mode=RunMode.RUN)
    except Exception as exc:  # what Hydra's own check catches; it reports nothing either
        message = override_error_message(self, config_name, list(overrides), exc)
        if message is not None:
            print(f"{_program}: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        return _HYDRA_GET_MODE(self, config_name, overrides)
    _hand_over(self.config_loader, cfg, config_name=config_name, overrides=list(overrides))
    return cfg.hydra.mode


def override_error_message(hydra: Hydra, config_name: str | None, overrides: list[str], exc: Exception) -> str | None:
    """One line for an override Hydra could not apply, naming it and what it takes; None for other errors.

    Hydra's own messages (exit 1) were four to seven lines: for ``modle=enhanced`` they suggested
    ``+modle=enhanced``, which bondexp then refused in turn; for ``model=enhancd`` they listed the
    group's options under the config search path; for ``workers=abc`` they named OmegaConf's
    ``object_type``. The cases are an unknown key (:func:`_unknown_key`), a deletion of one
    (:func:`_nothing_to_delete`), a group option that does not exist (:func:`_unknown_option`) and
    a value of the wrong type (:func:`_wrong_type`).
    """
    for explain in (_unknown_key, _nothing_to_delete, _unknown_option, _wrong_type):
        message = explain(hydra, config_name, overrides, exc)
        if message is not None:
            return message
    return None


def _unknown_key(hydra: Hydra, config_name: str | None, overrides: list[str], exc: Exception) -> str | None:
    """An override of a key the config does not have, with the closest key there.

    The keys beside the unknown one come from composing without its override; without a close
    one, the message says how to add a key the config lacks (an estimator parameter its model
    file does not list). Under a section whose keys the schema fixes (``drift``, ``tune``, ...) or a
    model file's ``early_stopping`` block, a '+' would add a key bondexp refuses, so without a close
    key the message lists the section's keys instead.
    """
    cause = exc.__cause__
    if not isinstance(exc, ConfigCompositionException) or not str(exc).startswith("Could not override"):
        return None
    if not isinstance(cause, (ConfigKeyError, ConfigAttributeError)) or not cause.full_key:
        return None
    key = str(cause.full_key)
    # the override's key, or one below it (models.enhanced.early_stopping.patience=3 where the file has no such block)
    given = [o for o in overrides if o.split("=", 1)[0] == key or o.split("=", 1)[0].startswith(f"{key}.")]
    if not given:
        return None
    parent, _, name = key.rpartition(".")
    cfg, node = _composed_without(hydra, config_name, [o for o in overrides if o not in given], parent)
    known = _keys_of(node)
    fixed = is_dataclass(OmegaConf.get_type(node)) if node is not None else False  # '+' would add a key bondexp refuses
    models = [str(k) for k in cfg.get("models") or {}] if cfg is not None else []
    if re.fullmatch(r"models\.[^.]+\.early_stopping|model\.early_stopping", parent):  # a model file's own block
        from bondexp.config import EarlyStoppingConf

        keys = [f.name for f in fields(EarlyStoppingConf)]
        fixed = name not in keys  # one of them the file does not set is added with '+'
        known = keys if fixed else known
    hint = did_you_mean(name, known)
    if not hint and fixed:
        where = f"the '{parent}' keys are" if parent else "bondexp's top-level keys are"
        return f"The '{key}' config key does not exist: {where} {', '.join(known)}."
    if not hint and key.startswith("model.") and models:
        # `model` holds only a model file without a package header; '+model.x=' then failed as "keys without a _target_"
        setting, value = given[-1].split("=", 1)
        where = f"models.{models[0]}.{setting[6:]}={value}" if len(models) == 1 else f"models.<name>.{setting[6:]}={value}"
        among = "" if len(models) == 1 else f", <name> one of {', '.join(models)}"
        hint = f" A model's parameters are set under its name: {where}{among}."
    if not hint:
        hint = f" To add a key the config does not have, prefix it with '+': +{given[-1]}."
    return f"The '{key}' config key does not exist.{hint}"


def _composed_without(hydra: Hydra, config_name: str | None, rest: list[str], parent: str) -> tuple[DictConfig | None, DictConfig | None]:
    """The config composed with ``rest`` (the overrides but the one Hydra refused) and its section ``parent``
    (the whole config for ``""``), for the keys beside a refused one; ``(None, None)`` when ``rest`` fails too
    (the suggestion is a courtesy), the section None when it is no mapping."""
    try:
        cfg = hydra.config_loader.load_configuration(config_name=config_name, overrides=rest, run_mode=RunMode.RUN)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:
        return None, None
    return cfg, node if isinstance(node, DictConfig) else None


def _keys_of(node: DictConfig | None) -> list[str]:
    return [str(k) for k in node.keys() if k != "hydra"] if node is not None else []


_NOTHING_TO_DELETE = re.compile(r"Could not delete from config\. '(?P<key>[^']+)' does not exist\.")


def _nothing_to_delete(hydra: Hydra, config_name: str | None, overrides: list[str], exc: Exception) -> str | None:
    """``~steps.tun``: a deletion of a key the config does not have, with the closest key beside it.

    Hydra said "Could not delete from config. 'steps.tun' does not exist." and how to see a traceback, exit 1.
    """
    found = _NOTHING_TO_DELETE.fullmatch(str(exc)) if isinstance(exc, ConfigCompositionException) else None
    if found is None:
        return None
    key = found["key"]
    parent, _, name = key.rpartition(".")
    _, node = _composed_without(hydra, config_name, [o for o in overrides if o.split("=", 1)[0] != f"~{key}"], parent)
    known = _keys_of(node)
    hint = did_you_mean(name, known) or (f" The '{parent}' keys are {', '.join(known)}." if parent and known else "")
    return f"~{key}: the '{key}' config key does not exist, so there is nothing to delete.{hint}"


def _unknown_option(hydra: Hydra, config_name: str | None, overrides: list[str], exc: Exception) -> str | None:
    """A config group override (``model=enhancd``, ``model=[basic,enhancd]``) naming an option the group does not have."""
    missing = getattr(exc, "missing_cfg_file", None)
    if not isinstance(exc, MissingConfigException) or not missing or "/" not in missing:
        return None
    group, _, option = missing.rpartition("/")
    given = [o for o in overrides if o.split("=", 1)[0].lstrip("+") == group and option in _listed(o.split("=", 1)[-1])]
    if not given:
        return None  # a defaults list in a config file names it: Hydra's message says which file
    options = sorted(hydra.config_loader.get_group_options(group, ObjectType.CONFIG))
    hint = did_you_mean(option, options)
    return f"{given[-1]}: the '{group}' config group has no option '{option}'.{hint} Its options: {', '.join(options)}."


def _listed(value: str) -> list[str]:
    """The options an override's value names: ``a`` or ``[a,b]``."""
    return [part.strip() for part in value.strip().strip("[]").split(",")]


def _wrong_type(hydra: Hydra, config_name: str | None, overrides: list[str], exc: Exception) -> str | None:
    """An override whose value the key's type refuses (``workers=abc``, ``progress=maybe``, ``tune=foo``), in OmegaConf's words."""
    cause = exc.__cause__
    prefix = "Error merging override "
    if not isinstance(exc, ConfigCompositionException) or not str(exc).startswith(prefix):
        return None
    if not isinstance(cause, (ValidationError, ConfigTypeError)):
        return None
    override = str(exc)[len(prefix) :]
    key = str(getattr(cause, "full_key", "") or override.split("=", 1)[0].lstrip("+~"))
    reason = str(cause).splitlines()[0].strip().rstrip(".")  # OmegaConf's next lines name full_key and object_type
    if isinstance(cause, ConfigTypeError) or "is not a subclass of" in reason:  # a mapping given a list or a value
        import difflib

        groups = [g for g in hydra.config_loader.list_groups("") if g != "hydra"]
        value = override.split("=", 1)[-1]
        hint = "".join(f" To choose the '{g}' group's options: {g}={value}." for g in difflib.get_close_matches(key, groups, n=1))
        return f"{override}: '{key}' holds a mapping of settings; set one with {key}.<name>=<value>.{hint}"
    return f"{override}: {reason}."


def _hand_over(loader: Any, cfg: DictConfig, *, config_name: str | None, overrides: list[str]) -> None:
    """Have ``loader``'s next compose return ``cfg`` if it asks for the same run; later ones compose as usual.

    Hydra's run appends ``hydra.mode=RUN`` when the config sets no mode; that override is applied here.
    """
    compose = loader.load_configuration

    def load_configuration(**kwargs: Any) -> DictConfig:
        del loader.load_configuration  # once: a sweep's job configs are composed by Hydra
        extra = kwargs["overrides"][len(overrides) :]
        if (
            kwargs["run_mode"] != RunMode.RUN
            or kwargs["config_name"] != config_name
            or kwargs["overrides"][: len(overrides)] != overrides
            or extra not in ([], ["hydra.mode=RUN"])
        ):
            return compose(**kwargs)
        if extra:
            cfg.hydra.mode = RunMode.RUN
            cfg.hydra.overrides.hydra.append(extra[0])
        return cfg

    loader.load_configuration = load_configuration


def _get_help(self: Hydra, help_cfg: DictConfig, cfg: DictConfig, args_parser: Any, resolve: bool) -> str:
    """``Hydra.get_help`` that fills only the placeholders the help template uses.

    Hydra 1.3 lists Hydra's own config groups (launchers, sweepers, logging: some 70 listings) for
    ``$HYDRA_CONFIG_GROUPS`` even when the template, like bondexp's, shows only ``$APP_CONFIG_GROUPS``,
    and walks Hydra's groups again to leave them out of the latter.
    """
    template = string.Template(help_cfg.template)
    used = {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)}
    fill = {
        "FLAGS_HELP": lambda: self.format_args_help(args_parser),
        "HYDRA_CONFIG_GROUPS": lambda: _format_groups(self, hydras=True),
        "APP_CONFIG_GROUPS": lambda: _format_groups(self, hydras=False),
        "CONFIG": lambda: OmegaConf.to_yaml(cfg, resolve=resolve),
    }
    return template.substitute({name: make() for name, make in fill.items() if name in used})


def _format_groups(hydra: Hydra, *, hydras: bool) -> str:
    """Hydra's compact ``group: option, option`` lines for Hydra's own groups or for the app's, walking only those."""
    loader = hydra.config_loader

    def walk(parent: str) -> list[str]:
        found = []
        for child in loader.list_groups(parent):
            group = f"{parent}/{child}" if parent else child
            if not parent and (group == "hydra") != hydras:
                continue
            if loader.get_group_options(group, ObjectType.CONFIG):
                found.append(group)
            if loader.get_group_options(group, ObjectType.GROUP):
                found.extend(walk(group))
        return found

    return "".join(f"{group}: {', '.join(sorted(loader.get_group_options(group)))}\n" for group in sorted(walk("")))


@functools.cache
def libyaml_loader() -> type:
    """OmegaConf's YAML loader on libyaml's C parser: the same rules, about ten times faster.

    ``omegaconf._utils.get_yaml_loader`` builds a ``yaml.SafeLoader`` subclass (pure Python) anew on
    every call: a float resolver YAML 1.1 lacks, no timestamps, a ``pathlib.Path`` tag and an error on
    duplicate keys. Hydra parses every config file it composes with it (21 for a default run). This
    is that class with ``yaml.CSafeLoader`` before it, built once: libyaml scans and parses, and
    OmegaConf's resolvers and constructors make the values, so they are the same (tested on every
    shipped config file).
    """
    python = _OMEGACONF_YAML_LOADER()

    class OmegaConfCLoader(yaml.CSafeLoader, python):  # type: ignore[misc,valid-type]  # python is a class built at run time
        """libyaml's parser first in the MRO; resolvers, constructors and the duplicate-key check from OmegaConf's class."""

        def __init__(self, stream: Any) -> None:
            self.text = stream.read() if hasattr(stream, "read") else stream
            self.name = getattr(stream, "name", None)  # the file Hydra opened, for the error
            super().__init__(self.text)

        def get_single_data(self) -> Any:
            try:
                return super().get_single_data()
            except yaml.YAMLError:
                pass  # OmegaConf's own loader says what is wrong, quoting the line (below, not chained to this one)
            loader = python(self.text)  # OmegaConf's safe loader, as yaml.load runs it
            loader.name = self.name or loader.name  # the file, in the error's marks (which quote the line for text)
            try:
                return loader.get_single_data()
            except yaml.YAMLError as err:
                where = f"The config file {self.name}" if self.name else "The config text"
                raise InvalidYAMLError(f"{where} is not valid YAML:\n{err}") from None
            finally:
                loader.dispose()

    return OmegaConfCLoader


class InvalidYAMLError(yaml.YAMLError, CompactHydraException):
    """A config file that is not YAML: a YAMLError to OmegaConf's callers, and to Hydra one whose message
    it prints alone. A plain YAMLError came as two chained tracebacks (about 120 lines) naming "<unicode string>"."""
