"""
What a timer queue's arguments must be, checked before anything changes: a
timeout (a number of seconds from 0 to the queue's maximum), a timer (an
L{ITimer} or a plain callable) and a positive setting; and how a checked
timer is called.  Every queue checks its arguments here, in the caller's
thread, so that they are refused alike and a failed call changes nothing.
"""

from __future__ import annotations

import math
import numbers
import types
from collections.abc import Callable
from typing import cast

from timerserver.interfaces import ITimer

_PLAIN_CALLABLES = frozenset(
    {types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.BuiltinMethodType}
)


def checkTimeout(timeout: object, maximum: float) -> float:
    """
    Return C{timeout} as a float if it is a number of seconds from 0 to
    C{maximum}; raise C{TypeError} or C{ValueError} otherwise.
    """
    if type(timeout) is bool or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    value = _asFloat(timeout)
    # NaN fails both comparisons; infinity (or a number past the floats) the second.
    if 0 <= value <= maximum:
        return value
    raise ValueError(f"timeout must be between 0 and {maximum} seconds, not {_shown(timeout)}")


def _asFloat(value: numbers.Real) -> float:
    """C{float(value)}, or an infinity of its sign for a number too large for a float."""
    try:
        return float(value)
    except OverflowError:  # 10**400, a huge Fraction
        return -math.inf if value < 0 else math.inf


def _shown(value: object) -> str:
    """The repr of C{value} for an error message, shortened if it is a huge number."""
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return f"an int of {cast(int, value).bit_length()} bits"
    if len(text) > 60:
        return f"{text[:40]}... ({len(text)} characters)"
    return text


def checkTimer(timer: object) -> bool:
    """Return whether C{timer} is an L{ITimer}; raise if it is not callable either."""
    if type(timer) in _PLAIN_CALLABLES:
        return False  # cannot provide an interface: skip the costly check
    if ITimer.providedBy(timer):
        return True
    if callable(timer):
        return False
    raise TypeError(f"timer must provide ITimer or be callable, not {timer!r}")


def callTimer(timer: object, isTimer: bool, userData: object) -> None:
    """Call C{timer} (an L{ITimer} if C{isTimer}, else a callable) with C{userData}."""
    if isTimer:
        cast(ITimer, timer).onTimer(userData)
    else:
        cast(Callable[[object], object], timer)(userData)


def positiveFinite(name: str, value: object) -> float:
    """
    Return C{value} as a float if it is a finite number > 0; raise
    C{TypeError} or C{ValueError} naming C{name} otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {value!r}")
    result = _asFloat(value)
    if not (0 < result < math.inf):
        raise ValueError(f"{name} must be finite and > 0, not {_shown(value)}")
    return result
