"""Packets as lines of text, for ``pipebit tail``: Python reprs, or JSON.  Pure: no I/O.

JSON has no bytes and no arrays, so both travel as one-key objects, which
``pipebit send`` reads back (:func:`array_from_json`)::

    {"$bytes": "<base64>"}
    {"$array": {"dtype": "<u1", "shape": [1080, 1920, 3], "data": "<base64>"}}

An array's ``dtype`` is numpy's ``dtype.str`` (byte order, kind, item size) and
its ``data`` all its items in C order, in that byte order: the fields of the
codec's extension type 2 (docs/format.md, "Arrays").  Without ``--json`` an
array is shown by its shape and dtype, not its items: ``array(shape=(1080,
1920, 3), dtype=uint8)``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
from typing import Any, List

from ._arrays import is_array, loaded_numpy, payload, unpack_array

BYTES_KEY = "$bytes"  # bytes in JSON: {"$bytes": "<base64>"}
ARRAY_KEY = "$array"  # numpy arrays in JSON: {"$array": {"dtype": "<f4", "shape": [2, 3], "data": "<base64>"}}
_PLAIN = " (tail without --json prints it)"


class Unprintable(Exception):
    """A packet has no faithful text in the output form asked for; the message says why."""


class _Summary:
    """Stands for an array in a packet's repr: its shape and dtype, not its items."""

    def __init__(self, array: Any) -> None:
        dtype = array.dtype
        shown = dtype.name if dtype.kind in "biufc" and dtype.isnative else repr(dtype.str)  # uint8, '>i4', '<U2'
        self.text = f"array(shape={tuple(array.shape)!r}, dtype={shown})"

    def __repr__(self) -> str:
        return self.text


def _summarized(value: Any) -> Any:
    """``value`` with every array in it replaced by its :class:`_Summary` (dict keys hold no arrays)."""
    if isinstance(value, list):
        return [_summarized(item) for item in value]
    if isinstance(value, dict):
        return {key: _summarized(item) for key, item in value.items()}
    return _Summary(value) if is_array(value) else value


def to_json(value: Any) -> Any:
    """A packet value as JSON data: bytes become ``{"$bytes": base64}``, arrays ``{"$array": ...}``,
    and a dict key that is not a ``str`` becomes its repr (JSON keys are text): ``"3"``, ``"(1, 2)"``, ``"b'k'"``.

    Raises :class:`Unprintable` rather than print what a JSON reader would get wrong:
    NaN and the infinities (``json.dumps`` writes ``NaN``, which is not JSON), and two
    keys of one dict whose texts are the same (a reader keeps only one of them).
    """
    if isinstance(value, bytes):
        return {BYTES_KEY: base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        shown: dict[str, Any] = {}
        for key, item in value.items():
            text = key if isinstance(key, str) else repr(key)
            if text in shown:  # e.g. 1 and "1"
                raise Unprintable(f"a dict has two keys that are both written {text!r} in JSON{_PLAIN}")
            shown[text] = to_json(item)
        return shown
    if isinstance(value, float) and not math.isfinite(value):
        raise Unprintable(f"JSON has no number {value!r}{_PLAIN}")
    if is_array(value):
        data = base64.b64encode(loaded_numpy().ascontiguousarray(value).tobytes()).decode("ascii")
        return {ARRAY_KEY: {"dtype": value.dtype.str, "shape": list(value.shape), "data": data}}
    return value


def format_packet(packet: List[Any], as_json: bool) -> str:
    """One packet as a line of output (without the newline): its repr, or JSON."""
    try:
        if as_json:
            return json.dumps(to_json(packet))
        return repr(_summarized(packet) if loaded_numpy() is not None else packet)
    except RecursionError:  # all three recurse once per level; a packet may nest as deep as the codec goes
        raise Unprintable("it nests deeper than Python can print") from None
    except ValueError:  # from int.__repr__: the limit _int_from_json describes (the values are all builtins)
        raise Unprintable(
            "it holds an integer of more digits than Python converts to text "
            "(PYTHONINTMAXSTRDIGITS=0 in the environment lifts that limit)"
        ) from None


def array_from_json(spec: object) -> Any:
    """The array an ``{"$array": spec}`` object stands for, checked as strictly as one read from a pipe.

    Raises ``ValueError`` saying what is wrong with ``spec``, and
    :class:`~pipebit.errors.NumpyMissingError` without numpy.
    """
    if not isinstance(spec, dict) or sorted(spec) != ["data", "dtype", "shape"]:
        raise ValueError(f'"{ARRAY_KEY}" must hold an object of exactly "dtype", "shape" and "data"')
    dtype, shape, data = spec["dtype"], spec["shape"], spec["data"]
    if not isinstance(dtype, str) or not isinstance(data, str) or not isinstance(shape, list):
        raise ValueError(f'"{ARRAY_KEY}" needs a "dtype" text, a "shape" list and base64 "data" text')
    if not all(type(n) is int and 0 <= n < 1 << 62 for n in shape):
        raise ValueError(f'the "shape" of a "{ARRAY_KEY}" must list whole numbers >= 0, not {shape!r}')
    return unpack_array(payload(dtype, shape, base64.b64decode(data, validate=True)))


def from_json(obj: dict[str, Any]) -> Any:
    """``json.loads`` object hook undoing the bytes and array encodings of ``tail --json`` (:mod:`pipebit._render`).

    Raises :class:`argparse.ArgumentTypeError` (which ``json.loads`` lets through) for bad base64.
    """
    if len(obj) == 1 and isinstance(obj.get(BYTES_KEY), str):
        try:
            return base64.b64decode(obj[BYTES_KEY], validate=True)
        except ValueError as exc:  # binascii.Error; or text that is not ASCII
            raise argparse.ArgumentTypeError(f'not valid base64 in a "{BYTES_KEY}" ({exc})') from None
    if len(obj) == 1 and ARRAY_KEY in obj:
        try:
            return array_from_json(obj[ARRAY_KEY])
        except (ValueError, ImportError) as exc:  # ImportError: NumpyMissingError
            raise argparse.ArgumentTypeError(f'not an array in a "{ARRAY_KEY}" ({exc})') from None
    return obj


def int_from_json(digits: str) -> int:
    """``json.loads`` ``parse_int`` hook: ``int()``, or :class:`argparse.ArgumentTypeError` for too many digits.

    Since CPython 3.11 (and 3.10.7, 3.9.14) ``int()`` refuses more than 4300 digits by
    default, against quadratic-time conversions (CVE-2020-10735).  Its ValueError would
    otherwise leave ``json.loads`` looking like any other bad JSON.
    """
    try:
        return int(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"an integer of {len(digits.lstrip('-'))} digits, more than Python converts from text "
            "(PYTHONINTMAXSTRDIGITS=0 in the environment lifts that limit)"
        ) from None
