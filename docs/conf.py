"""Sphinx configuration: MyST-NB pages and notebooks (executed at build time), API reference from the docstrings.

pip install -e ".[docs]" -c constraints.txt && python -m sphinx -W -b html docs docs/_build/html
"""

import importlib.metadata

project = "jaxrnn"
author = "the jaxrnn developers"
copyright = "2026, the jaxrnn developers"
release = importlib.metadata.version("jaxrnn")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# Pages are MyST markdown; notebooks are MyST markdown too (jupytext), run when the site builds.
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "force"  # every notebook runs at every build: one that stops teaching fails it
nb_execution_timeout = 300
nb_execution_raise_on_error = True

# API reference: Google-style docstrings, signatures with their type hints.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}
autodoc_inherit_docstrings = False  # Flax's own docstrings (Module.setup, ...) are not jaxrnn's to render

# Every cross-reference must resolve. Names from other packages cannot: their object inventories (intersphinx) are
# downloaded at build time, and the build runs offline (CI machines reach only package registries).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|flax|optax|collections\.abc|os|typing|pathlib)\..*"),
    (r"py:class", r"Array|PyTree|linen"),  # the local alias for jax.Array; Literal["linen", ...] options
    (r"py:class", r"jaxrnn\.init\.Params"),  # a TypeVar: a params dict or a jaxrnn.nnx layer
    (r"py:class", r"jaxrnn\..*\._\w+"),  # private base classes named in signatures
]

html_theme = "sphinx_book_theme"
html_title = "jaxrnn"
html_theme_options = {"show_toc_level": 2}


# Every public name gets a rendered entry, or the build fails (tests/test_docs.py reads these two as well).
PUBLIC_MODULES = (
    "jaxrnn",
    "jaxrnn.nnx",
    "jaxrnn.functional",
    "jaxrnn.init",
    "jaxrnn.inspect",
    "jaxrnn.parallel",
    "interop",
)


def public_names(module) -> list[str]:  # noqa: ANN001
    """``module.__all__``, else its names without a leading underscore."""
    return list(getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")])


def _check_public_names(app, exception):  # noqa: ANN001 (Sphinx's hook signature)
    if exception is not None:
        return
    import importlib
    import types

    documented = set(app.env.get_domain("py").objects)
    missing = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in public_names(module):
            value = getattr(module, attr)
            if isinstance(value, types.ModuleType) or getattr(value, "__module__", "").startswith("typing"):
                continue
            if f"{name}.{attr}" not in documented:
                missing.append(f"{name}.{attr}")
    if missing:
        raise RuntimeError(f"public names with no entry in the API reference: {', '.join(sorted(missing))}")


def setup(app):  # noqa: ANN001, ANN201
    app.connect("build-finished", _check_public_names)
