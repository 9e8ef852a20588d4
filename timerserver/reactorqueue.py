"""
L{ReactorTimerQueue}: L{IQueueTimers} with one reactor C{DelayedCall} per
pending timer.
"""

from __future__ import annotations

from types import MethodType
from typing import cast

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.components import registerAdapter
from zope.interface import implementer

from timerserver._queuebase import DEFAULT_MAXIMUM_TIMEOUT, QueueHandle, TimerQueueBase
from timerserver.interfaces import IMonitorTimerQueue, IQueueTimers


class ReactorTimerHandle(QueueHandle):
    """A handle of a L{ReactorTimerQueue}; C{call} is set while pending."""

    __slots__ = ("call",)

    def __init__(self, queue: object) -> None:
        QueueHandle.__init__(self, queue)
        self.call: IDelayedCall | None = None


@implementer(IQueueTimers)
class ReactorTimerQueue(TimerQueueBase[ReactorTimerHandle]):
    """
    Timers over C{IReactorTime.callLater}.

    Re-arming later uses C{DelayedCall.reset}, which only records the extra
    delay; re-arming sooner cancels and calls C{callLater} again, because
    C{reset} to an earlier time searches the reactor's whole heap.
    """

    _handleClass = ReactorTimerHandle

    def __init__(
        self,
        reactor: IReactorTime | None = None,
        maximumTimeout: float = DEFAULT_MAXIMUM_TIMEOUT,
        monitor: IMonitorTimerQueue | None = None,
    ) -> None:
        TimerQueueBase.__init__(self, reactor, maximumTimeout, monitor)
        self._callLater = self._reactor.callLater

    def __repr__(self) -> str:
        return f"<ReactorTimerQueue at {id(self):#x}>"

    def _arm(self, h: ReactorTimerHandle, timeout: float, now: float) -> None:
        deadline = now + timeout
        call = h.call
        if call is None:
            h.call = self._callLater(timeout, self._fire, h)
        elif deadline >= h.deadline:  # type: ignore[operator]
            call.reset(timeout)
        else:
            call.cancel()
            h.call = self._callLater(timeout, self._fire, h)
        h.deadline = deadline

    def _disarm(self, h: ReactorTimerHandle) -> None:
        call = h.call
        if call is not None:  # it is: h is pending
            call.cancel()
            h.call = None
        h.deadline = None

    def _cancelAll(self) -> list[ReactorTimerHandle]:
        # Ours are the calls of this queue's own _fire, told by identity: the
        # reactor's other calls are anyone's, and == would run their __eq__.
        fire = type(self)._fire
        calls = cast("list[DelayedCall]", self._reactor.getDelayedCalls())
        pending = [
            cast(ReactorTimerHandle, call.args[0])
            for call in calls
            if type(call.func) is MethodType
            and call.func.__self__ is self
            and call.func.__func__ is fire
            and call.active()
        ]
        for h in pending:
            self._disarm(h)
        return pending

    def _fire(self, h: ReactorTimerHandle) -> None:
        h.call = None
        h.deadline = None
        self._expire(h)


registerAdapter(ReactorTimerQueue, IReactorTime, IQueueTimers)
