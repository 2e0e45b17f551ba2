#!/usr/bin/python3
"""The client of scripts/bench (slixmpp), driven by JSON lines on stdin.

It logs in, announces presence, registers with each --register domain (XEP-0077, the legacy
fields: the gateway serves registered users only), prints {"event": "ready"}, then runs one
command at a time and answers each with one JSON line:

- {"cmd": "echo", "domain": D, "contacts": C, "count": N, "at": T, "timeout": S}: at
  monotonic time T, sends N chat messages as fast as it can, message i to contact
  c{i mod C}@D, and times until every reply is back.
- {"cmd": "rate", "domain": D, "contacts": C, "count": N, "rate": R, "at": T, "timeout": S}:
  the same, message i sent at T + i/R; each round trip counts from when its message was
  due (replies matched by body), so that a late sender does not hide a slow answer.
- {"cmd": "wait", "total": N, "timeout": S}: waits until N chat messages with a body have
  arrived since start (or the last "reset"); reports when the first and the last came.
- {"cmd": "reset"}; {"cmd": "quit"}.

Times are time.monotonic(), the same clock in every process on Linux, so that the driver
can combine several clients' figures. It exits when the stream ends."""

import argparse
import asyncio
import json
import sys
import time

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import slixmpp


QUOTE = {"'": "&apos;"}


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


class Bench(slixmpp.ClientXMPP):
    def __init__(self, jid, password, domains):
        super().__init__(jid, password)
        self["feature_mechanisms"].unencrypted_plain = True
        self.domains = domains
        self.reset()
        self.run = 0
        self.pending = {}  # body -> when it was due (rate) or None (echo)
        self.expected = 0
        self.replies = 0
        self.last_reply = None
        self.done = None
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("disconnected", self.on_disconnected)

    def reset(self):
        self.received, self.first, self.last = 0, None, None
        self.latencies = []

    async def on_start(self, _event):
        self.send_presence()
        for domain in self.domains:
            register = self.Iq(stype="set", sto=domain)
            register.append(ET.fromstring("<query xmlns='jabber:iq:register'><prefix/></query>"))
            await register.send(timeout=60)
        emit("ready")
        asyncio.ensure_future(self.commands())

    def on_disconnected(self, _event):
        emit("disconnected")

    def on_message(self, message):
        if message["type"] != "chat" or not message["body"]:
            return
        now = time.monotonic()
        self.received += 1
        if self.first is None:
            self.first = now
        self.last = now
        body = message["body"]
        if body.startswith("echo: "):
            due = self.pending.pop(body[6:], False)
            if due is not False:
                self.replies += 1
                self.last_reply = now
                if due is not None:
                    self.latencies.append(now - due)
                if self.replies == self.expected and not self.done.done():
                    self.done.set_result(None)

    async def commands(self):
        loop = asyncio.get_event_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                self.disconnect()
                return
            command = json.loads(line)
            name = command["cmd"]
            if name == "echo":
                await self.echo(command)
            elif name == "rate":
                await self.rate(command)
            elif name == "wait":
                await self.wait(command)
            elif name == "reset":
                self.reset()
                emit("reset")
            elif name == "quit":
                self.disconnect()
                return

    def send_chat(self, to, body):
        # Raw XML: a stanza object per message would cost the client more than the server.
        self.send_raw("<message type='chat' to='%s' id='%s'><body>%s</body></message>"
                      % (escape(to, QUOTE), escape(body, QUOTE), escape(body)))

    @staticmethod
    def contact(command, number):
        return "c%d@%s" % (number % command["contacts"], command["domain"])

    def prepare(self, count):
        self.run += 1
        self.replies, self.last_reply, self.latencies = 0, None, []
        self.expected = count
        self.done = asyncio.get_event_loop().create_future()
        return ["%s/%d/%d" % (self.boundjid.user, self.run, number) for number in range(count)]

    async def finish(self, command, start, sent):
        remaining = command["at"] + command["timeout"] - time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(self.done), max(0.1, remaining))
        except asyncio.TimeoutError:
            pass
        lost = len(self.pending)
        self.pending.clear()
        return dict(sent=sent, received=self.replies, lost=lost, start=start, end=self.last_reply)

    async def echo(self, command):
        bodies = self.prepare(command["count"])
        await asyncio.sleep(max(0, command["at"] - time.monotonic()))
        start = time.monotonic()
        for number, body in enumerate(bodies):
            self.pending[body] = None
            self.send_chat(self.contact(command, number), body)
        emit("echo", **await self.finish(command, start, len(bodies)))

    async def rate(self, command):
        bodies = self.prepare(command["count"])
        interval = 1.0 / command["rate"]
        start = command["at"]
        sent = 0
        for number, body in enumerate(bodies):
            due = start + number * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.pending[body] = due
            self.send_chat(self.contact(command, number), body)
            sent += 1
        figures = await self.finish(command, start, sent)
        latencies = [latency * 1e3 for latency in self.latencies]
        figures.update(
            p50_ms=percentile(latencies, 0.50),
            p99_ms=percentile(latencies, 0.99),
            max_ms=max(latencies) if latencies else None,
        )
        emit("rate", **figures)

    async def wait(self, command):
        deadline = time.monotonic() + command["timeout"]
        while self.received < command["total"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        emit("wait", received=self.received, first=self.first, last=self.last)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--register", default="", help="comma-separated domains to register with")
    arguments = parser.parse_args()
    domains = [domain for domain in arguments.register.split(",") if domain]
    client = Bench(arguments.jid, arguments.password, domains)
    client.connect(("127.0.0.1", arguments.port), force_starttls=False, disable_starttls=True)
    client.loop.run_until_complete(client.disconnected)


if __name__ == "__main__":
    main()
