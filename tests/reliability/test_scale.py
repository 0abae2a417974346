"""Many live sessions in one process: 10,000 in ``make test``, 100,000 under ``make soak``.

Sessions run on the shared scheduler, so the process's threads do not grow with them;
every session answers its own query with its own history, a few killed among them come
back by name, and the runtime stops them all (the leak check then finds nothing).
"""

from __future__ import annotations

import random
import threading

import pykka

import supervisors
from beamagent import MessageType, Runtime
from tests.reliability.conftest import scale

SESSIONS = scale(10_000, 100_000)


def test_sessions_by_the_ten_thousand_start_answer_and_stop() -> None:
    rng = random.Random(12)
    threads_before = threading.active_count()
    with Runtime(store=":memory:") as rt:
        sessions = [rt.start_session(backend="local") for _ in range(SESSIONS)]
        # Workers (one per core, plus any added while callers waited), the monitor, the
        # timer thread: a handful, not one per session.
        assert threading.active_count() - threads_before <= 16

        victims = rng.sample(range(SESSIONS), 10)
        for index in victims:
            ref = supervisors.whereis(rt._session_name(sessions[index].session_id))
            assert ref is not None
            mon = supervisors.monitor(ref, watcher=None)
            supervisors.kill(ref)
            mon.wait(10)

        for index, session in enumerate(sessions):
            reply = session.query(f"prompt {index}", timeout=30)
            assert reply[-1].type is MessageType.RESULT
            assert reply[-1].content == f"prompt {index}"

        assert threading.active_count() - threads_before <= 16
        for index in [*victims, *rng.sample(range(SESSIONS), 20)]:
            session = sessions[index]
            prompts = [
                m.content
                for m in rt.get_session_messages(session.session_id)
                if m.type is MessageType.USER
            ]
            assert prompts == [f"prompt {index}"]
        assert sorted(rt.live_sessions()) == sorted(s.session_id for s in sessions)
    assert not [ref for ref in pykka.ActorRegistry.get_all() if ref.is_alive()]
