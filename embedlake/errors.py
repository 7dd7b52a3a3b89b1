"""Errors users see. Each names the place (file, line, field) so bad input can be fixed."""
from __future__ import annotations

import re


class EmbedlakeError(Exception):
    """Base class: the CLI prints these as one clear line and exits non-zero (no traceback)."""

    exit_code = 2


class InputError(EmbedlakeError):
    """Bad user input: a file, a line in it, or a field of it."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        place = ", ".join(([f"line {line}"] if line is not None else [])
                          + ([f"field {field!r}"] if field is not None else []))
        where = ": ".join(x for x in (str(path) if path is not None else "", place) if x)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(EmbedlakeError):
    """A config file or override that does not validate against the schema."""


class LakeError(EmbedlakeError):
    """The lake refused an operation: missing run, commit conflict, bad name."""


class CommitConflict(LakeError):
    """Another writer committed the same manifest first (put-if-absent lost the race)."""


# ---- unwrapping: what the CLI prints for an exception ---------------------------------------------
# Colour codes, raw (ESC [ ... m) or escaped inside a repr ("\x1b[36m"): Ray colours its task names.
_ANSI = re.compile(r"(?:\x1b|\\x1b|\\033|\\u001b)\[[0-9;]*[A-Za-z]")
# Ray's header of a task error: "ray::ingest_stage() (pid=123, ip=10.0.0.1)"
_RAY_TASK = re.compile(r"ray::[\w.<>]+\(\)(?: \(pid=\d+, ip=[^)]*\))?:? ?")
_NEWLINE = re.compile(r"\r?\n|\\n")          # raw or escaped (inside a repr)


def root_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, behind the RayTaskError(s) that carry it.

    Ray re-raises a task's error on the driver as RayTaskError (or the dual class
    `as_instanceof_cause()` makes, whose str() is the remote traceback); both keep the original
    exception in `.cause`. Duck-typed, so this module needs no Ray import.
    """
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            return exc
        exc = cause
    return exc


def user_error(exc: BaseException) -> EmbedlakeError | None:
    """The EmbedlakeError behind an exception (through Ray's wrappers and exception chaining), or None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cur = root_cause(cur)
        if isinstance(cur, EmbedlakeError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def one_line(text: str) -> str:
    """`text` as one plain line: colour codes and Ray's `ray::task() (pid=.., ip=..)` headers removed;
    an embedded traceback (raw or escaped newlines) cut down to its final exception line; other
    lines joined ("invalid config (...): train.dimm: unknown key; train.dim: ...")."""
    text = _RAY_TASK.sub("", _ANSI.sub("", str(text)))
    lines = _NEWLINE.split(text)
    if not any(_FRAME.match(ln) for ln in lines):
        out = ""
        for ln in (x.strip() for x in text.splitlines()):
            if ln:
                out = f"{out}{' ' if not out or out.endswith(':') else '; '}{ln}"
        return out.strip()
    head = lines[0].strip()
    tail = [ln.strip() for ln in lines[1:] if ln.strip() and not ln.startswith((" ", "\t", *_FRAME_LINES))]
    if not tail:
        return head
    return f"{head} {tail[-1]}" if head else tail[-1]


_FRAME = re.compile(r'\s+File "|Traceback \(most recent call last\)')
_FRAME_LINES = ("Traceback", "During handling", "The above exception")
