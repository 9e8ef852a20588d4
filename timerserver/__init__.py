"""
timerserver: per-connection timer queues for Twisted, and a server that
shows them off.
"""

from timerserver.clock import useMonotonicTime
from timerserver.interfaces import (
    IMonitorTimerQueue,
    InvalidTimerHandle,
    IQueueTimers,
    ITimer,
    SetTimerIf,
    TimerHandle,
    UpdateTimerIf,
)
from timerserver.monitor import TimerQueueCounters
from timerserver.periodic import Periodic
from timerserver.reactorqueue import ReactorTimerQueue
from timerserver.threadsafe import ThreadSafeTimerQueue
from timerserver.wheel import TimerWheel

__version__ = "0.1.0"

__all__ = [
    "IMonitorTimerQueue",
    "IQueueTimers",
    "ITimer",
    "InvalidTimerHandle",
    "Periodic",
    "ReactorTimerQueue",
    "SetTimerIf",
    "ThreadSafeTimerQueue",
    "TimerHandle",
    "TimerQueueCounters",
    "TimerWheel",
    "UpdateTimerIf",
    "__version__",
    "useMonotonicTime",
]
