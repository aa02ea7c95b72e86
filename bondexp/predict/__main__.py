"""`python -m bondexp.predict`: a thin Hydra shell around :func:`bondexp.predict.app.predict`; a refused input exits 2."""

from __future__ import annotations

import gc
import signal
import sys
from pathlib import Path


def _interrupted_before_the_work(signum: int, frame: object) -> None:
    """Ctrl-C before the work begins (the imports below, Hydra's compose): end as :func:`main` does.

    A ``KeyboardInterrupt`` there printed a traceback, or, inside Hydra's compose, an error of
    Hydra's half-built config (``'NoneType' object has no attribute ...``) with exit 1. Hydra does
    not catch a ``SystemExit``: nothing is begun that needs undoing.
    """
    print("\nInterrupted: no predictions written.", file=sys.stderr)
    raise SystemExit(130)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupted_before_the_work)

import hydra  # noqa: E402  # after the handler above
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bondexp import hydra_startup  # noqa: E402
from bondexp.errors import BondexpError, end_logged_output_with_its_reader, reader_went_away  # noqa: E402
from bondexp.predict.app import predict, register_configs  # noqa: E402

hydra_startup.install("bondexp.predict")  # as `python -m bondexp`: one compose, and a misspelled key named in one line
register_configs()


@hydra.main(version_base="1.3", config_path="pkg://bondexp.conf", config_name="predict")
def _main(cfg: DictConfig) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the work: main's handler answers Ctrl-C
    hc = HydraConfig.get()
    try:
        written = predict(cfg, out_dir=Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    except BondexpError as err:
        from bondexp.config import NEW_RUN_DIRS
        from bondexp.runs import discard_unused

        print(f"bondexp.predict: error: {err}", file=sys.stderr)
        discard_unused(Path(hc.runtime.output_dir), made_here=NEW_RUN_DIRS)  # nothing written: no folder left
        sys.exit(2)
    print("\n".join(f"{name}: {path}" for name, path in written.items()))


def main() -> None:
    """Console-script entry point; exits without collecting what is left, as ``bondexp.__main__.main`` does."""
    signal.signal(signal.SIGINT, _interrupted_before_the_work)
    try:
        end_logged_output_with_its_reader(sys.argv)
        _main()
    except BrokenPipeError:  # `--help | head`, or the written paths piped to a reader that stopped
        sys.exit(reader_went_away())
    except KeyboardInterrupt:  # the files appear only once every batch is written: none is half there
        print("\nInterrupted: no predictions written.", file=sys.stderr)
        sys.exit(130)
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
