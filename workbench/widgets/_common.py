"""Pieces every view uses: an error area, callbacks that report there, figures as images, tables.

A callback's exception in ipywidgets goes to the browser's log console, where nobody looks; every
callback of these views runs through ``ErrorArea.guard`` so its error shows in the widget itself.
"""
import functools
import html
import io
import traceback

import ipywidgets as W

from ..errors import WorkbenchError


class ErrorArea(W.HTML):
    """A red box under a view that shows the last callback error (empty when all is well)."""

    def __init__(self, **kwargs):
        super().__init__(value="", **kwargs)
        self.add_class("workbench-error")
        self.last_error = None

    def show(self, error):
        """Show an exception (or a message); a WorkbenchError's message says all, others get a traceback."""
        if isinstance(error, BaseException):
            text = str(error) if isinstance(error, WorkbenchError) else "".join(
                traceback.format_exception(type(error), error, error.__traceback__)[-6:])
            text = f"{type(error).__name__}: {text}" if isinstance(error, WorkbenchError) else text
        else:
            text = str(error)
        self.last_error = text
        self.value = (f'<pre style="white-space:pre-wrap;color:#a50e0e;background:#fce8e6;padding:4px;'
                      f'margin:2px 0">{html.escape(text)}</pre>')

    def clear(self):
        self.last_error = None
        self.value = ""

    def guard(self, fn):
        """``fn`` wrapped so that an exception shows here instead of only in the log console."""
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:           # noqa: BLE001 (every error belongs in the widget)
                self.show(e)
                return None
        return wrapped

    def __repr__(self):
        return f"<workbench ErrorArea: {'error' if self.last_error else 'empty'}>"


def figure_png(figure, dpi=80):
    """PNG bytes of a matplotlib Figure (made with matplotlib.figure.Figure, never pyplot)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def image_of(figure, **layout):
    return W.Image(value=figure_png(figure), format="png", layout=W.Layout(max_width="100%", **layout))


def fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "?"
    return str(value)


def table_html(header, rows, css_class="workbench-table", row_styles=None):
    """A plain HTML table (values escaped); ``row_styles`` gives an inline style per row."""
    e = html.escape
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{e(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        style = f" style='{row_styles[i]}'" if row_styles and row_styles[i] else ""
        cells = "".join(f"<td style='padding:2px 8px'>{e(fmt(c))}</td>" for c in row)
        body.append(f"<tr{style}>{cells}</tr>")
    return (f"<table class='{css_class}' style='border-collapse:collapse;font-size:12px'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def heading(text):
    return W.HTML(f"<b>{html.escape(text)}</b>")


class Deferred:
    """Figures of a view drawn only once the view is shown (a Workbench tab): matplotlib takes ~0.5 s a figure.

    A view standing alone is active at once; the Workbench activates a tab's view when it is selected.
    """
    active = True
    _pending = None

    def when_shown(self, draw):
        if self.active:
            self._pending = None
            draw()
        else:
            self._pending = draw

    def activate(self):
        self.active = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending()
