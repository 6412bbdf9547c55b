"""Finding the user's line: which file:line of a custom layer's own code a check points at.

A problem report is only useful if it says where to look. Exceptions carry a traceback (the
innermost frame in the layer's own files wins over numpy's internals); changes to the inputs or
outputs lists are caught as they happen (WatchedList); a method's return is caught with a profile
hook; anything else points at the method's ``def`` line.
"""
import os
import sys
import sysconfig

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # .../workbench
# The workbench's machinery; its bundled example layers (workbench/examples/layers) count as user code.
_MACHINERY_DIRS = tuple(os.path.join(_PACKAGE_DIR, d) for d in ("runtime", "testing"))
_LIBRARY_DIRS = tuple({os.path.abspath(p) for key in ("stdlib", "platstdlib", "purelib", "platlib")
                       if (p := sysconfig.get_paths().get(key))})


def _is_library(filename):
    path = os.path.abspath(filename)
    return any(path.startswith(d + os.sep) for d in _MACHINERY_DIRS + _LIBRARY_DIRS) or filename.startswith("<frozen")


def class_files(cls):
    """Files holding the code of ``cls`` and its user-written bases (not the workbench's CustomLayer)."""
    files = set()
    for klass in getattr(cls, "__mro__", [cls]):
        for value in vars(klass).values():
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None and not _is_library(code.co_filename):
                files.add(os.path.abspath(code.co_filename))
    return files


def exception_location(exc, cls):
    """file:line of the innermost traceback frame in the layer's own files, else in any user code."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    own = class_files(cls)
    for filename, line in reversed(frames):
        if os.path.abspath(filename) in own:
            return f"{filename}:{line}"
    for filename, line in reversed(frames):
        if not _is_library(filename):
            return f"{filename}:{line}"
    return None


def method_location(cls, method):
    """file:line of ``def method`` in the class (or the base that defines it)."""
    fn = getattr(cls, method, None)
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else None


def call_with_return_line(fn, *args):
    """Call ``fn`` and also return the file:line of the statement it returned from (or None)."""
    target = getattr(getattr(fn, "__func__", fn), "__code__", None)
    seen = []
    previous = sys.getprofile()

    def profile(frame, event, _arg):
        if event == "return" and frame.f_code is target and not seen:
            seen.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")

    sys.setprofile(profile)
    try:
        result = fn(*args)
    finally:
        sys.setprofile(previous)
    return result, (seen[0] if seen else None)


def _caller():
    frame = sys._getframe(3)          # _caller <- _note <- the list method <- the layer
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class WatchedList(list):
    """A list that remembers where it was first changed: a layer replacing ``outputs[i]`` or ``inputs[i]``."""

    changed_at = None

    def _note(self):
        if self.changed_at is None:
            self.changed_at = _caller()

    def __setitem__(self, index, value):
        self._note()
        super().__setitem__(index, value)

    def __delitem__(self, index):
        self._note()
        super().__delitem__(index)

    def __iadd__(self, other):
        self._note()
        return super().__iadd__(other)

    def append(self, value):
        self._note()
        super().append(value)

    def extend(self, values):
        self._note()
        super().extend(values)

    def insert(self, index, value):
        self._note()
        super().insert(index, value)

    def pop(self, index=-1):
        self._note()
        return super().pop(index)

    def remove(self, value):
        self._note()
        super().remove(value)

    def clear(self):
        self._note()
        super().clear()

    def reverse(self):
        self._note()
        super().reverse()

    def sort(self, **kwargs):
        self._note()
        super().sort(**kwargs)
