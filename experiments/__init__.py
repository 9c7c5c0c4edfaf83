"""Experiments: one module each, ``run(cfg) -> dict[str, float]`` plus a thin ``@hydra.main``.

Run from the repository root: ``python -m experiments.<name> key=value`` (add ``-m`` for a
multirun). Configs live in ``conf/``; results in ``results/<name>/`` and the MLflow store.

Use ``@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")``: an absolute
``config_path`` finds ``conf/`` both under ``python -m`` and when ``main()`` is imported and called
(tests, notebooks); a relative ``"../conf"`` only works when the module runs as ``__main__``.
"""

from pathlib import Path

#: Absolute path of the repository's Hydra config folder.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
