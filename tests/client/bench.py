#!/usr/bin/python3
"""Echo round trips through a real server: sends N messages to an echo contact as fast as
the client can and times until every reply is back. Prints one line of figures."""

import argparse
import sys
import time

import xml.etree.ElementTree as ET

import slixmpp


class Bench(slixmpp.ClientXMPP):
    def __init__(self, jid, password, target, count):
        super().__init__(jid, password)
        self["feature_mechanisms"].unencrypted_plain = True
        self.target, self.count, self.received = target, count, 0
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)

    async def on_start(self, _event):
        self.send_presence()
        # The gateway serves registered users only: register (legacy XEP-0077 fields).
        register = self.Iq(stype="set", sto=self.target.split("@", 1)[1])
        register.append(ET.fromstring("<query xmlns='jabber:iq:register'><prefix/></query>"))
        await register.send()
        self.started = time.monotonic()
        for number in range(self.count):
            self.send_message(mto=self.target, mbody="message %d" % number, mtype="chat")

    def on_message(self, message):
        if message["type"] == "chat" and message["body"]:
            self.received += 1
            if self.received == self.count:
                elapsed = time.monotonic() - self.started
                print("%d echo round trips in %.2f s: %.0f msg/s" % (self.count, elapsed, self.count / elapsed))
                self.disconnect()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--count", type=int, default=5000)
    arguments = parser.parse_args()
    client = Bench(arguments.jid, arguments.password, arguments.to, arguments.count)
    client.connect(("127.0.0.1", arguments.port), force_starttls=False, disable_starttls=True)
    client.loop.run_until_complete(client.disconnected)
    sys.exit(0 if client.received == arguments.count else 1)


if __name__ == "__main__":
    main()
