"""`python -m bondexp.predict`: a thin Hydra shell around :func:`bondexp.predict.app.predict`; a refused input exits 2."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from bondexp.errors import BondexpError, end_logged_output_with_its_reader, reader_went_away
from bondexp.predict.app import predict, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://bondexp.conf", config_name="predict")
def _main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        written = predict(cfg, out_dir=Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    except BondexpError as err:
        print(f"bondexp.predict: error: {err}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(f"{name}: {path}" for name, path in written.items()))


def main() -> None:
    """Console-script entry point; exits without collecting what is left, as ``bondexp.__main__.main`` does."""
    try:
        end_logged_output_with_its_reader(sys.argv)
        _main()
    except BrokenPipeError:  # `--help | head`, or the written paths piped to a reader that stopped
        sys.exit(reader_went_away())
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
