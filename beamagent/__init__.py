"""beamagent: the BEAM/OTP process model for LLM agents.

Every agent session is a supervised actor, a registry actor routes new
sessions to backends by policy, and workflows run as graphs of node actors.

Example::

    from beamagent import Runtime

    with Runtime(store=":memory:") as runtime:
        session = runtime.start_session(backend="local")
        print(session.query("hello")[-1].content)
"""

from beamagent.backends.base import SessionState
from beamagent.backends.local import LocalExit, LocalToolCall
from beamagent.backends.permissions import Allow, Deny, PermissionContext
from beamagent.log import configure_logging
from beamagent.messages import ContentBlock, Message, MessageType, normalize
from beamagent.runtime import BackendSpec, Runtime, default_runtime, shutdown_default_runtime
from beamagent.session import QueryRef, Session

__all__ = [
    "Allow",
    "BackendSpec",
    "ContentBlock",
    "Deny",
    "LocalExit",
    "LocalToolCall",
    "Message",
    "MessageType",
    "PermissionContext",
    "QueryRef",
    "Runtime",
    "Session",
    "SessionState",
    "configure_logging",
    "default_runtime",
    "normalize",
    "shutdown_default_runtime",
]
