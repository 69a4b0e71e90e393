"""gmbench-example-plugin: a third-party method plugin, as a user would write one.

gmbench finds this module through the ``gmbench`` entry point declared in
pyproject.toml; nothing in gmbench names it. The method is imported inside
the hook so that ``gmbench plugins list`` stays cheap.
"""

from gmbench import hookimpl

__version__ = "0.1.0"


@hookimpl
def gmbench_register_methods(register):
    from gmbench_example_plugin.gmm import GaussianMixture

    register(GaussianMixture)
