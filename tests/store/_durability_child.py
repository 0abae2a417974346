"""Child process of ``test_durability``: records through a Runtime until it is killed.

Usage: ``python _durability_child.py STORE_PATH SESSION_ID``

It runs queries on a local session for ever, alternating ``query`` and
``send_query`` + ``receive_message``, and prints one JSON line on stdout each
time a call returned (the acknowledgement the parent checks against the file):

* ``{"ready": true}`` once the session is up;
* ``{"query": PROMPT, "uuids": [...]}`` after ``query`` returned;
* ``{"received": UUID, "prompt": PROMPT}`` after each ``receive_message``.
"""

from __future__ import annotations

import json
import sys

# beamagent never writes to stdout (warnings go to stderr): stdout carries only the
# acknowledgements.
from beamagent import MessageType, Runtime


def ack(line: dict[str, object]) -> None:
    """Print one acknowledgement and flush it at once."""
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def main(path: str, session_id: str) -> None:
    """Record until killed."""
    with Runtime(store=path) as rt:
        session = rt.start_session(
            backend="local",
            session_id=session_id,
            reply=lambda prompt, params: [f"{prompt} part {k}" for k in range(3)],
        )
        ack({"ready": True})
        i = 0
        while True:
            i += 1
            prompt = f"prompt {i}"
            if i % 2:
                messages = session.query(prompt, timeout=30)
                ack({"query": prompt, "uuids": [m.uuid for m in messages]})
            else:
                ref = session.send_query(prompt)
                while True:
                    message = session.receive_message(ref, timeout=30)
                    ack({"received": message.uuid, "prompt": prompt})
                    if message.type is MessageType.RESULT:
                        break


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
