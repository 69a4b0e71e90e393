"""gmbench's own datasets, registered like any plugin's (pytest-style built-in plugin)."""

from __future__ import annotations

from gmbench.hookspecs import hookimpl


@hookimpl
def gmbench_register_datasets(register):
    from gmbench.data.digits import Digits
    from gmbench.data.hub import HUB_DATASETS
    from gmbench.data.synthlang import SyntheticLanguage
    from gmbench.data.toy2d import TOY2D_DATASETS

    for cls in (*TOY2D_DATASETS, Digits, SyntheticLanguage, *HUB_DATASETS):
        register(cls)
