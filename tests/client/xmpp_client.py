#!/usr/bin/python3
"""A real XMPP client (slixmpp) driven by the integration tests over stdin/stdout.

It logs in, announces presence, then:
- prints every stanza it receives as one JSON line: {"event": "stanza", "xml": "..."};
- sends every line read on stdin, a JSON object {"send": "<xml/>"}, as raw XML, so that
  tests can send exactly the (possibly malformed) stanza they mean to.
It prints {"event": "ready"} once logged in and {"event": "disconnected"} if the stream ends.

Rooms are joined with slixmpp's own XEP-0045 plugin, as a client would: {"join": ROOM_JID,
"nick": NICK, "maxstanzas": N?, "password": P?} waits for the join to complete (occupants,
self-presence, history, subject) and prints {"event": "joined", ...} with what the plugin saw,
or {"event": "join_error", "condition": ..., "text": ...}, or {"event": "join_timeout"}.
"""

import argparse
import asyncio
import json
import logging
import os
import sys

import slixmpp
from slixmpp.xmlstream import tostring
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath


# The tests read JSON lines from stdout; anything a library prints goes to stderr instead
# (slixmpp 1.8's MUC join prints the delays it sees).
OUT = os.fdopen(os.dup(sys.stdout.fileno()), "w")
sys.stdout = sys.stderr


def emit(event, **fields):
    fields["event"] = event
    OUT.write(json.dumps(fields) + "\n")
    OUT.flush()


class Driven(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        # Test servers listen on loopback without TLS.
        self["feature_mechanisms"].unencrypted_plain = True
        self.register_plugin("xep_0045")
        # Stanzas of the login itself (bind, roster) are not the test's business.
        self.started = False
        self.pending = b""
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("disconnected", lambda _: emit("disconnected"))
        for name in ("message", "presence", "iq"):
            self.register_handler(
                Callback(
                    "dump " + name,
                    MatchXPath("{%s}%s" % (self.default_ns, name)),
                    self.on_stanza,
                )
            )

    def on_stanza(self, stanza):
        if self.started:
            # top_level keeps the stanza's own xmlns, so that it parses on its own.
            emit("stanza", xml=tostring(stanza.xml, top_level=True))

    async def on_start(self, _event):
        # Requesting the roster makes this an "interested resource" (RFC 6121 §2.1.6), to which
        # servers deliver subscription requests; slixmpp then approves them and subscribes
        # back (auto_authorize, auto_subscribe), as a user accepting the gateway would.
        await self.get_roster()
        self.started = True
        self.send_presence()
        self.loop.add_reader(sys.stdin.fileno(), self.on_stdin)
        emit("ready", jid=str(self.boundjid))

    def on_stdin(self):
        # Read what is there, not a line: sys.stdin's buffer would swallow the lines after
        # the first, and the reader would not fire again until more data came.
        data = os.read(sys.stdin.fileno(), 1 << 16)
        if not data:
            self.loop.remove_reader(sys.stdin.fileno())
            self.disconnect()
            return
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            if line.strip():
                command = json.loads(line)
                if "send" in command:
                    self.send_raw(command["send"])
                if "join" in command:
                    asyncio.ensure_future(self.join(command))

    async def join(self, command):
        room = slixmpp.JID(command["join"])
        try:
            presence, subject, occupants, history = await self.plugin["xep_0045"].join_muc_wait(
                room,
                command["nick"],
                password=command.get("password"),
                maxstanzas=command.get("maxstanzas"),
                timeout=20,
            )
        except slixmpp.exceptions.PresenceError as error:
            emit("join_error", room=str(room), condition=error.condition, text=error.text)
            return
        except asyncio.TimeoutError:
            emit("join_timeout", room=str(room))
            return
        emit(
            "joined",
            room=str(room),
            nick=presence["from"].resource,
            codes=sorted(int(code) for code in presence["muc"]["status_codes"]),
            occupants=sorted(occupant["from"].resource for occupant in occupants),
            history=[message["body"] for message in history],
            subject=subject["subject"],
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    client = Driven(arguments.jid, arguments.password)
    client.connect(("127.0.0.1", arguments.port), force_starttls=False, disable_starttls=True)
    client.loop.run_until_complete(client.disconnected)


if __name__ == "__main__":
    main()
