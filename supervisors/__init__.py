"""OTP supervision for Pykka: processes, links, monitors, supervisors, names and timers.

Usable on its own by any Pykka user: subclass :class:`Process` instead of
``pykka.ThreadingActor`` and put processes under a :class:`Supervisor` or
:class:`DynamicSupervisor`.

Example::

    from supervisors import ChildSpec, Process, Supervisor

    class Worker(Process):
        def on_receive(self, message):
            return message * 2

    sup = Supervisor.start(children=[ChildSpec("w", (Worker, (), {}), name="worker")])
    whereis("worker").ask(21)  # 42, also after the worker crashed and was restarted
    sup.stop()
"""

from supervisors._childspec import BRUTAL_KILL, INFINITY, ChildSpec, ChildType, RestartType
from supervisors._introspection import format_tree, tree
from supervisors._messages import Down, Exit
from supervisors._names import await_name, register, registered, reserved, unregister, whereis
from supervisors._process import (
    MonitorRef,
    Process,
    ProcessFuture,
    ask,
    current_owner,
    current_process,
    deliver,
    demonitor,
    kill,
    link,
    lookup,
    monitor,
    owner_alive,
    require,
    send_exit,
    shutdown,
    spawn_options,
    start_link,
    uninterruptible,
    unlink,
)
from supervisors._reasons import Crashed, ExitReason, Killed, NoProc, Normal, Shutdown, is_abnormal
from supervisors._registry import install as _install_registry
from supervisors._scheduler import blocking, release_idle_workers
from supervisors._supervisor import (
    ChildInfo,
    DynamicSupervisor,
    DynamicSupervisorRef,
    GiveUpHook,
    Strategy,
    Supervisor,
    SupervisorRef,
    supervisor_spec,
)
from supervisors._timers import TimerRef, release_idle_timer_thread, send_after
from supervisors.errors import (
    AlreadyRegistered,
    ChildNotFound,
    ChildRunning,
    DuplicateChild,
    InvalidChildSpec,
    MaxChildrenError,
    NoReply,
    NoSuchProcess,
    NotHandled,
    NotInProcess,
    ReplyError,
    StartChildError,
    SupervisorsError,
    WaitTimeout,
)

_install_registry()  # constant-time unregistering in pykka.ActorRegistry

__all__ = [
    "BRUTAL_KILL",
    "INFINITY",
    "AlreadyRegistered",
    "ChildInfo",
    "ChildNotFound",
    "ChildRunning",
    "ChildSpec",
    "ChildType",
    "Crashed",
    "Down",
    "DuplicateChild",
    "DynamicSupervisor",
    "DynamicSupervisorRef",
    "Exit",
    "ExitReason",
    "GiveUpHook",
    "InvalidChildSpec",
    "Killed",
    "MaxChildrenError",
    "MonitorRef",
    "NoProc",
    "NoReply",
    "NoSuchProcess",
    "Normal",
    "NotHandled",
    "NotInProcess",
    "Process",
    "ProcessFuture",
    "ReplyError",
    "RestartType",
    "Shutdown",
    "StartChildError",
    "Strategy",
    "Supervisor",
    "SupervisorRef",
    "SupervisorsError",
    "TimerRef",
    "WaitTimeout",
    "ask",
    "await_name",
    "blocking",
    "current_owner",
    "current_process",
    "deliver",
    "demonitor",
    "format_tree",
    "is_abnormal",
    "kill",
    "link",
    "lookup",
    "monitor",
    "owner_alive",
    "register",
    "registered",
    "release_idle_timer_thread",
    "release_idle_workers",
    "require",
    "reserved",
    "send_after",
    "send_exit",
    "shutdown",
    "spawn_options",
    "start_link",
    "supervisor_spec",
    "tree",
    "uninterruptible",
    "unlink",
    "unregister",
    "whereis",
]
