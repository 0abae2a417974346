"""Sessions: the session actor (a supervised state machine) and the ``Session`` handle."""

from beamagent.backends.base import SessionState
from beamagent.session.actor import QueryRef, Recorder, SessionActor, SessionConfig
from beamagent.session.handle import Session

__all__ = ["QueryRef", "Recorder", "Session", "SessionActor", "SessionConfig", "SessionState"]
