"""className -> implementation: discovery from folders, files, modules, classes, lists and mappings.

Files are compiled with their real path (so tracebacks and debuggers show the user's own line)
and executed in a fresh namespace each time: reloading a changed file simply compiles it again
and replaces its classes. No ``importlib.reload``, so redefinition is always safe.
"""
import hashlib
import os
import sys
import types
from pathlib import Path

from ..errors import ImplementationError
from .protocol import class_name_of, is_implementation

# Classes made with @wb.custom_layer, or CustomLayer subclasses defined in __main__ (a notebook):
# className -> the latest definition. wb.load falls back to these.
GLOBAL = {}


def register_global(cls):
    GLOBAL[class_name_of(cls)] = cls


class Implementations:
    """The implementations one model uses, and the files they came from (for reloading)."""

    def __init__(self):
        self.classes = {}        # className -> class
        self.files = {}          # path -> (mtime, [classNames])
        self.folders = []        # folders given as sources: rescanned by reload for new files

    def add_source(self, source):
        """Add implementations from a folder, .py file, module, class, list/tuple, or mapping."""
        if source is None:
            return
        if isinstance(source, dict):
            for name, cls in source.items():
                if not isinstance(cls, type):
                    raise ImplementationError(f"layers mapping: the value for '{name}' is a "
                                              f"{type(cls).__name__}, not a class")
                self.classes[str(name)] = cls
        elif isinstance(source, (list, tuple)):
            for item in source:
                self.add_source(item)
        elif isinstance(source, type):
            if not is_implementation(source) and not hasattr(source, "evaluate"):
                raise ImplementationError(f"{source.__name__} is not a custom layer: subclass wb.CustomLayer "
                                          f"or decorate it with @wb.custom_layer")
            self.classes[class_name_of(source)] = source
        elif isinstance(source, types.ModuleType):
            name = getattr(source, "__name__", None)
            found = [cls for cls in vars(source).values() if is_implementation(cls)
                     and (cls.__module__ == name or cls.__module__.startswith(f"{name}."))]   # packages re-export
            if not found:
                raise ImplementationError(f"layers: module '{name}' defines no custom layer class")
            for cls in found:
                self.classes[class_name_of(cls)] = cls
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                folder = path.resolve()
                if folder not in self.folders:
                    self.folders.append(folder)
                for file in layer_files(folder):
                    self.load_file(file, helpers_allowed=True)
            elif path.is_file():
                self.load_file(path)
            else:
                raise ImplementationError(f"layers: '{path}' is neither a folder nor a .py file")
        else:
            raise ImplementationError(f"layers: cannot take implementations from a {type(source).__name__}; "
                                      f"give a folder, a .py file, a module, a class, a list or a mapping")

    def load_file(self, path, helpers_allowed=False):
        """Compile and run one implementation file; return {className: class} it defines.

        In a folder, a file defining no layer class is a helper module and is allowed; a
        className defined by two files is an error naming both.
        """
        path = Path(path).resolve()
        found = compile_file(path, require_class=not helpers_allowed)
        for name in found:
            other = next((p for p, (_, names) in self.files.items() if name in names and p != str(path)), None)
            if other:
                raise ImplementationError(f"{path}: defines className '{name}', which {other} defines too; "
                                          f"keep one implementation per className")
        self.files[str(path)] = (path.stat().st_mtime_ns, list(found))
        self.classes.update(found)
        return found

    def merge(self, other):
        self.classes.update(other.classes)
        self.files.update(other.files)
        self.folders += [f for f in other.folders if f not in self.folders]

    def pending(self):
        """(files changed on disk or new in a folder, files deleted) since they were compiled."""
        changed, deleted = [], []
        for path, (mtime, _) in self.files.items():
            try:
                if Path(path).stat().st_mtime_ns != mtime:
                    changed.append(path)
            except FileNotFoundError:
                deleted.append(path)
        known = set(self.files)
        changed += [str(f) for folder in self.folders for f in layer_files(folder) if str(f) not in known]
        return changed, deleted

    def forget(self, paths):
        """Drop deleted files and their classes; return the classNames they implemented."""
        names = set()
        for path in paths:
            _, defined = self.files.pop(path)
            for name in defined:
                self.classes.pop(name, None)
            names.update(defined)
        return names

    def lookup(self, class_name):
        return self.classes.get(class_name) or GLOBAL.get(class_name)


def layer_files(folder):
    """The .py files of a layers folder; names starting with '_' are private helpers, never run."""
    return [f.resolve() for f in sorted(Path(folder).glob("*.py")) if not f.name.startswith("_")]


def compile_file(path, require_class=True):
    """Execute a layer file in a fresh module namespace; its implementation classes by className.

    The module is registered in sys.modules under a name unique to the file's path (replaced on
    each reload), so dataclasses, pickling and inspect.getsource work in layer files.
    """
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ImplementationError(f"{path}: cannot read ({e.strerror})") from None
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    module_name = f"workbench_layers.{path.stem}_{digest}"
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise ImplementationError(f"{path}:{e.lineno}: syntax error: {e.msg}\n    {(e.text or '').rstrip()}") \
            from None
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except Exception as e:
        if previous is not None:          # the last good version of the file stays importable
            sys.modules[module_name] = previous
        else:
            del sys.modules[module_name]
        line = _line_in(e, str(path))
        raise ImplementationError(f"{path}{':' + str(line) if line else ''}: running the file failed: "
                                  f"{type(e).__name__}: {e}") from e
    found = {class_name_of(cls): cls for cls in classes_in(module.__dict__, module_name)}
    if not found and require_class:
        raise ImplementationError(f"{path}: defines no custom layer class (subclass wb.CustomLayer or "
                                  f"decorate a class with @wb.custom_layer)")
    return found


def classes_in(namespace, module_name):
    """Implementation classes defined in a namespace (not merely imported into it)."""
    return [obj for obj in list(namespace.values())
            if is_implementation(obj) and (module_name is None or obj.__module__ == module_name)]


def _line_in(exc, filename):
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
