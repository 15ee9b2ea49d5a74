"""Figures and explorers for the notebooks.

pebslab only. Every explorer is a plain function that takes parameters and
returns a matplotlib Figure; notebooks wire sliders to it with
:func:`explore`, and draw it once at its defaults as a static figure.
"""

from __future__ import annotations


def explore(fn, **widgets_kwargs):
    """``ipywidgets.interact`` for a Figure-returning function, without duplicate plots.

    The figure is displayed in the widget's output area and then closed, so
    the inline backend does not draw it a second time below the widget.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    def show(**kwargs):
        fig = fn(**kwargs)
        if fig is not None:
            display(fig)
            plt.close(fig)

    show.__name__ = getattr(fn, "__name__", "explore")
    show.__doc__ = fn.__doc__
    return widgets.interact(show, **widgets_kwargs)


def __getattr__(name):
    # `pebslab.viz.pinning` etc. without an explicit import
    import importlib
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
