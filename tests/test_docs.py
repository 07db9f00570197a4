"""The API reference's raw material: every public name has a docstring, and the docstrings' examples run.

(The site itself is built by ``python -m sphinx -W -b html docs docs/_build/html``, which .ci/run runs: warnings
are errors, the course notebooks execute, and docs/conf.py fails the build for a public name without an entry.)
"""

import doctest
import importlib
import pathlib
import runpy
import types

import pytest

# The build's own list of public modules and its rule for a module's public names (docs/conf.py).
_CONF = runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1] / "docs" / "conf.py"))
PUBLIC_MODULES, public_names = _CONF["PUBLIC_MODULES"], _CONF["public_names"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(name):
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    missing = []
    for attr in public_names(module):
        value = getattr(module, attr)
        if isinstance(value, types.ModuleType) or not callable(value):
            continue
        if value.__module__.split(".")[0] not in ("jaxrnn", "interop"):
            continue  # re-exported from elsewhere (typing, flax): not ours to document
        if not (value.__doc__ or "").strip():
            missing.append(attr)
    assert not missing, f"{name}: no docstring for {missing}"


@pytest.mark.parametrize("name", ["jaxrnn", "jaxrnn.inspect", "jaxrnn.functional", "jaxrnn.nnx", "interop"])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failures, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
    if name == "jaxrnn":
        assert attempted > 0
