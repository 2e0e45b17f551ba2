#!/usr/bin/python3
"""The driver of `scripts/bench irc`: Jabbridge's IRC bridge beside Biboumi, in one run,
through one throw-away Prosody and one throw-away ngircd (its throttle off), with the same
clients. Run it through scripts/bench irc (which installs what it needs); as root, it starts
Prosody, ngircd and the gateways as their own unprivileged users.

Contenders (each on its own component domain of the same Prosody):
  jabbridge  Jabbridge's IRC bridge (SQLite; it always keeps a room archive);
  bib_on     Biboumi with its message history on (its default; stored in SQLite);
  bib_off    Biboumi with every user's `record_history` off.
Biboumi's throttle is off for every user (ad-hoc `configure` on the IRC server's JID,
throttle_limit=-1) and so is Jabbridge's flood control (per_second = 0).

Phases, each run for every contender in turn (a fresh gateway and database each time):
  throughput  one XMPP user in a channel posts N messages, in R rounds (a window of W outstanding, freed
              by the room's reflection); a raw IRC client in the channel counts the PRIVMSGs.
              msg/s from the first send to the last PRIVMSG; the gateway's CPU per message.
              Then 49 more XMPP users join the channel (50 in all) and the IRC client says M
              lines, one every I ms: the delay to each XMPP user, p50/p99 over all deliveries.
              Just before, the floor: the same lines to the same 50 users written by a bare
              XEP-0114 component on the same Prosody (no IRC, store or logic in between).
              It runs in P passes (--passes, 2), the contenders alternating (A B C A B C),
              as this machine's speed drifts over minutes: the msg/s is the median over
              every pass's rounds, the CPU and the fan-out's figures the passes' mean.
  separate    K = 1, 50, 200 XMPP users each join a channel of their own: the gateway's RSS
              growth per user.
  shared      the same, all in one channel; then, 200 users joined, the gateway's CPU over
              some seconds of idleness, per user and second.
Every XMPP user has their own IRC connection through the gateway (both gateways do that).

The XMPP clients are minimal raw c2s clients (expat through ElementTree's pull parser), all
in this one asyncio process: cheap enough that one Python core does not set the pace; each
stanza's arrival is the kernel's receive timestamp (SO_TIMESTAMPNS), so that the clients'
own work does not count in the latencies. Everything is on loopback, on free
ports, in a temp dir, bounded in count and time, and stopped and removed on exit."""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

# What scripts/bench's driver already has (this directory is on sys.path when run).
from bench_run import (
    Processes,
    busy_ticks,
    fmt,
    free_port,
    fsync_ms,
    listening,
    log,
    machine,
    status_kib,
)

TICKS = os.sysconf("SC_CLK_TCK")
CLIENT = "jabber:client"
STREAM = "http://etherx.jabber.org/streams"
MUC = "http://jabber.org/protocol/muc"
MUC_USER = "http://jabber.org/protocol/muc#user"
COMMANDS = "http://jabber.org/protocol/commands"
DATA = "jabber:x:data"
BODY = "{%s}body" % CLIENT
NETWORK = "irc.test"  # Jabbridge's name for the IRC server (ngircd's Name too)
FLOOR = "floor.localhost"  # the bare component that sets the fan-out's floor


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


# --- a process's CPU and memory ---------------------------------------------------------------

def cpu_snapshot(pid):
    """(nanoseconds on CPU per living thread, utime+stime ticks of the whole process)."""
    threads = {}
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as stat:
                    threads[tid] = int(stat.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        with open("/proc/%d/stat" % pid) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return threads, int(fields[11]) + int(fields[12])
    except OSError:
        return {}, 0


def cpu_seconds(before, after):
    """CPU time between two snapshots: exact (schedstat) when no thread ended in between,
    else from the process's ticks (10 ms resolution, dead threads included)."""
    threads_before, ticks_before = before
    threads_after, ticks_after = after
    if threads_before and set(threads_before) <= set(threads_after):
        return (sum(threads_after.values()) - sum(threads_before.values())) / 1e9
    return (ticks_after - ticks_before) / TICKS


def our_ticks():
    """CPU ticks of this driver and every process it started, living or reaped."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), sum(int(field) for field in fields[11:15]))
    ours = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _) in stats.items():
            if parent in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return sum(stats[pid][1] for pid in ours if pid in stats)


def own_cpu():
    """This driver's own CPU seconds (the clients are all in it)."""
    usage = os.times()
    return usage.user + usage.system


def dump_smaps(pid, name):
    """With BENCH_SMAPS_DIR set, keeps a copy of the gateway's /proc/PID/smaps (a diagnostic)."""
    directory = os.environ.get("BENCH_SMAPS_DIR")
    if not directory:
        return
    try:
        with open("/proc/%d/smaps" % pid) as source, open(os.path.join(directory, name), "w") as copy:
            copy.write(source.read())
    except OSError:
        pass


# --- a minimal XMPP client ----------------------------------------------------------------------

# Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; Python's socket module does not name it): each
# read comes with the time the kernel received its last segment.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class Xmpp:
    """One c2s session: SASL PLAIN, bind, presence; then every top-level stanza is
    dispatched with the time its bytes reached this machine's socket (the kernel's
    timestamp, so that the clients' own work in this one process does not count in the
    latencies). No TLS (loopback), no stanza objects: cheap."""

    def __init__(self, user, domain, password):
        self.user, self.domain, self.password = user, domain, password
        self.jid = None
        self.sock = None
        self.loop = None
        self.out = bytearray()
        self.parser = None
        self.depth = 0
        self.root = None
        self.login_queue = asyncio.Queue()
        self.logged_in = False
        self.iqs = {}
        self.joins = {}  # room -> future of the self-presence
        self.on_message = None  # callback(element, body, read_at)
        self.counter = 0
        self.stanzas = 0

    # plumbing
    async def connect(self, port):
        self.loop = asyncio.get_event_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await self.loop.sock_connect(sock, ("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self.readable)

    def readable(self):
        try:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return
        except OSError:
            self.lost()
            return
        if not data:
            self.lost()
            return
        read_at = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                seconds, nanoseconds = struct.unpack("qq", payload[:16])
                read_at = seconds + nanoseconds / 1e9 - (time.time() - time.monotonic())
        self.data_received(data, read_at if read_at is not None else time.monotonic())

    def lost(self):
        if self.sock is None:
            return
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.sock = None
        for future in list(self.iqs.values()) + list(self.joins.values()):
            if not future.done():
                future.set_exception(ConnectionError("%s: the stream ended" % self.user))

    def send(self, text):
        if self.sock is None:
            raise ConnectionError("%s: the stream ended" % self.user)
        data = text.encode()
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.lost()
            return
        if sent < len(data):
            self.out += data[sent:]
            self.loop.add_writer(self.sock.fileno(), self.writable)

    def writable(self):
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.lost()
            return
        del self.out[:sent]
        if not self.out:
            self.loop.remove_writer(self.sock.fileno())

    def new_stream(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.send("<?xml version='1.0'?><stream:stream to='%s' version='1.0' "
                  "xmlns='jabber:client' xmlns:stream='%s'>" % (self.domain, STREAM))

    def data_received(self, data, read_at):
        parser = self.parser
        parser.feed(data)
        for event, element in parser.read_events():
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    self.root = element
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.root.clear()
                    self.dispatch(element, read_at)
                elif self.depth == 0:
                    self.lost()
                    return
            if parser is not self.parser:
                return  # the stream restarted (after SASL): nothing else was sent


    def next_id(self):
        self.counter += 1
        return "b%d" % self.counter

    def dispatch(self, element, read_at):
        self.stanzas += 1
        if not self.logged_in:
            self.login_queue.put_nowait(element)
            return
        tag = element.tag
        if tag == "{%s}message" % CLIENT:
            if self.on_message is not None:
                body = element.findtext(BODY)
                if body is not None:
                    self.on_message(element, body, read_at)
        elif tag == "{%s}presence" % CLIENT:
            sender = element.get("from", "")
            room, _, _ = sender.partition("/")
            future = self.joins.get(room)
            if future is not None and not future.done():
                if element.get("type") == "error":
                    error = element.find("{%s}error" % CLIENT)
                    text = ET.tostring(error, encoding="unicode") if error is not None else "?"
                    future.set_exception(RuntimeError("join refused: %s" % text))
                elif any(status.get("code") == "110"
                         for status in element.iter("{%s}status" % MUC_USER)):
                    future.set_result(sender.partition("/")[2])
        elif tag == "{%s}iq" % CLIENT:
            future = self.iqs.pop(element.get("id"), None)
            if future is not None and not future.done():
                future.set_result(element)
            elif element.get("type") in ("get", "set"):
                self.send("<iq type='error' to=%s id=%s><error type='cancel'><service-unavailable "
                          "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
                          % (quoteattr(element.get("from", "")), quoteattr(element.get("id", ""))))

    async def next_top(self, timeout=30):
        return await asyncio.wait_for(self.login_queue.get(), timeout)

    # session
    async def login(self):
        self.new_stream()
        features = await self.next_top()
        if features.find(".//{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms") is None:
            raise RuntimeError("%s: no SASL in %s" % (self.user, ET.tostring(features)))
        token = base64.b64encode(("\0%s\0%s" % (self.user, self.password)).encode()).decode()
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>" % token)
        answer = await self.next_top()
        if not answer.tag.endswith("success"):
            raise RuntimeError("%s: SASL failed: %s" % (self.user, ET.tostring(answer)))
        self.new_stream()
        await self.next_top()  # features (bind)
        self.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  "<resource>bench</resource></bind></iq>")
        bound = await self.next_top()
        self.jid = bound.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid")
        if bound.get("type") != "result" or not self.jid:
            raise RuntimeError("%s: bind failed" % self.user)
        self.logged_in = True
        self.send("<presence/>")

    async def iq(self, to, kind, payload, timeout=30):
        stanza_id = self.next_id()
        future = asyncio.get_event_loop().create_future()
        self.iqs[stanza_id] = future
        self.send("<iq type='%s' to=%s id='%s'>%s</iq>" % (kind, quoteattr(to), stanza_id, payload))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.iqs.pop(stanza_id, None)

    async def join(self, room, nick, timeout):
        future = asyncio.get_event_loop().create_future()
        self.joins[room] = future
        self.send("<presence to=%s><x xmlns='%s'><history maxstanzas='0'/></x></presence>"
                  % (quoteattr(room + "/" + nick), MUC))
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RuntimeError("%s: no self-presence from %s within %d s" % (self.user, room, timeout))
        finally:
            self.joins.pop(room, None)

    def groupchat(self, room, body, stanza_id):
        return ("<message type='groupchat' to=%s id='%s'><body>%s</body></message>"
                % (quoteattr(room), stanza_id, escape(body)))

    async def command(self, to, node, overrides, timeout=30):
        """Runs an ad-hoc command (XEP-0050) whose first step is a form: every field is sent
        back with its value, but those in `overrides` (var -> list of values), so that
        nothing else is cleared. Returns (the fields seen, the final answer)."""
        first = await self.iq(to, "set", "<command xmlns='%s' node='%s' action='execute'/>"
                              % (COMMANDS, node), timeout)
        command = first.find("{%s}command" % COMMANDS)
        if first.get("type") != "result" or command is None:
            raise RuntimeError("%s on %s: %s" % (node, to, ET.tostring(first, encoding="unicode")))
        form = command.find("{%s}x" % DATA)
        fields = {}
        submit = []
        for field in form.findall("{%s}field" % DATA) if form is not None else []:
            var = field.get("var")
            if not var or field.get("type") == "fixed":
                continue
            values = [value.text or "" for value in field.findall("{%s}value" % DATA)]
            fields[var] = (field.get("type"), values)
            values = overrides.get(var, values)
            submit.append("<field var=%s>%s</field>" % (
                quoteattr(var), "".join("<value>%s</value>" % escape(value) for value in values)))
        missing = set(overrides) - set(fields)
        if missing:
            raise RuntimeError("%s on %s has no field %s; it has %s"
                               % (node, to, ", ".join(sorted(missing)), ", ".join(sorted(fields))))
        done = await self.iq(to, "set", "<command xmlns='%s' node='%s' sessionid=%s action='complete'>"
                             "<x xmlns='%s' type='submit'>%s</x></command>"
                             % (COMMANDS, node, quoteattr(command.get("sessionid", "")), DATA,
                                "".join(submit)), timeout)
        if done.get("type") != "result":
            raise RuntimeError("%s on %s refused: %s" % (node, to, ET.tostring(done, encoding="unicode")))
        return fields, done

    def close(self):
        if self.sock is not None:
            try:
                self.send("</stream:stream>")
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self.lost()


# --- a raw IRC client -----------------------------------------------------------------------------

class Irc:
    """An IRC user on ngircd: registers, joins, answers PINGs, and counts the lines that
    contain `marker` (with the time the last one was read)."""

    def __init__(self):
        self.buffer = b""
        self.marker = None
        self.count = 0
        self.last = None
        self.waiters = []
        self.writer = None
        self.task = None

    async def connect(self, port, nick, timeout):
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.task = asyncio.ensure_future(self.read(reader))
        self.send("NICK %s" % nick)
        self.send("USER %s 0 * :%s" % (nick, nick))
        await self.expect(lambda line: b" 001 " in line, timeout)

    async def join(self, channel, timeout):
        self.send("JOIN %s" % channel)
        await self.expect(lambda line: b" 366 " in line, timeout)

    def send(self, line):
        self.writer.write(line.encode() + b"\r\n")

    async def read(self, reader):
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                break
            read_at = time.monotonic()
            self.buffer += chunk
            end = self.buffer.rfind(b"\n")
            if end < 0:
                continue
            complete, self.buffer = self.buffer[:end + 1], self.buffer[end + 1:]
            if self.marker is not None:
                found = complete.count(self.marker)
                if found:
                    self.count += found
                    self.last = read_at
            if self.waiters or b"PING" in complete:
                for line in complete.split(b"\r\n"):
                    if line.startswith(b"PING "):
                        self.writer.write(b"PONG " + line[5:] + b"\r\n")
                    for wanted, future in list(self.waiters):
                        if not future.done() and wanted(line):
                            future.set_result(line)
        for _, future in self.waiters:
            if not future.done():
                future.set_exception(ConnectionError("the IRC server closed the connection"))

    async def expect(self, wanted, timeout, what="an IRC line"):
        future = asyncio.get_event_loop().create_future()
        entry = (wanted, future)
        self.waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RuntimeError("IRC: no %s within %d s" % (what, timeout))
        finally:
            self.waiters.remove(entry)

    def close(self):
        if self.writer is not None:
            try:
                self.send("QUIT :bye")
            except Exception:  # noqa: BLE001
                pass
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


# --- processes ------------------------------------------------------------------------------------

ROOT = os.geteuid() == 0


def as_user(user, argv):
    """argv run as `user` (with its groups) when we are root."""
    if not ROOT:
        return argv
    entry = pwd.getpwnam(user)
    return ["setpriv", "--reuid=%d" % entry.pw_uid, "--regid=%d" % entry.pw_gid, "--init-groups"] + argv


def chown(path, user):
    if ROOT:
        entry = pwd.getpwnam(user)
        for base, directories, files in os.walk(path):
            os.chown(base, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(base, name), entry.pw_uid, entry.pw_gid)


def gateway_user(*candidates):
    for name in candidates:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return "nobody"


async def wait_for(condition, timeout, what, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(step)
    raise RuntimeError("timed out waiting for " + what)


# --- the gateways ---------------------------------------------------------------------------------

class Gateway:
    """One contender: started afresh (new database) for every phase."""

    key = label = domain = code = None

    def __init__(self, bench):
        self.bench = bench
        self.process = None
        self.directory = None
        self.runs = 0

    def room(self, channel):
        raise NotImplementedError

    async def prepare(self, clients):
        """Per-user settings before any join (nothing for Jabbridge)."""

    def logs(self):
        return []

    def stop(self):
        if self.process is not None:
            self.bench.processes.stop(self.process, timeout=8)
            self.process = None

    def new_directory(self, user):
        self.runs += 1
        directory = os.path.join(self.bench.directory, "%s-%d" % (self.key, self.runs))
        os.makedirs(directory)
        chown(directory, user)
        self.directory = directory
        return directory

    async def ready(self, probe):
        """Ready when the component answers a disco#info from a user."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("%s stopped at start: see %s" % (self.label, self.directory))
            try:
                answer = await probe.iq(self.domain, "get",
                                        "<query xmlns='http://jabber.org/protocol/disco#info'/>", 2)
                if answer.get("type") == "result":
                    return
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("%s did not answer disco#info within 30 s" % self.label)


class Jabbridge(Gateway):
    key, label, domain, code = "jabbridge", "Jabbridge", "irc.localhost", "j"

    def room(self, channel):
        return "%s%%%s@%s" % (channel, NETWORK, self.domain)

    def start(self):
        user = gateway_user("nobody")
        directory = self.new_directory(user)
        http_port = free_port()
        binary = self.bench.jabbridge_binary
        config = os.path.join(directory, "jabbridge.toml")
        with open(config, "w") as out:
            out.write("""[xmpp]
server = "127.0.0.1:{component}"
[database]
url = "sqlite://{dir}/jabbridge.db"
[http]
listen = "127.0.0.1:{http}"
[log]
level = "{log_level}"
[[bridge]]
kind = "irc"
domain = "{domain}"
secret = "{secret}"
allow = ["localhost"]
flood = {{ burst = 10, per_second = 0 }}
[[bridge.network]]
name = "{network}"
host = "127.0.0.1"
port = {port}
tls = "off"
""".format(component=self.bench.component_port, dir=directory, http=http_port, domain=self.domain,
           secret=self.bench.secret, network=NETWORK, port=self.bench.irc_port,
           log_level=self.bench.arguments.jabbridge_log))
        chown(directory, user)
        self.log_path = os.path.join(directory, "jabbridge.log")
        self.http_port = http_port
        self.process = self.bench.processes.start(
            as_user(user, [binary, "run", "--config", config]), cwd=directory,
            # JABBRIDGE_* variables would override the config: none of ours leak in.
            env={k: v for k, v in os.environ.items() if not k.startswith("JABBRIDGE")},
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)

    def metrics(self):
        """Its counters and gauges from /metrics, as {"name{labels}": value}."""
        try:
            text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.http_port, timeout=5).read()
        except OSError:
            return {}
        figures = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    figures[name] = float(value)
                except ValueError:
                    pass
        return figures

    def logs(self):
        try:
            with open(self.log_path, errors="replace") as text:
                return [line.rstrip() for line in text
                        if " WARN " in line or " ERROR " in line or "panicked" in line]
        except OSError:
            return []


class Biboumi(Gateway):
    domain = "biboumi.localhost"

    def __init__(self, bench, history):
        super().__init__(bench)
        self.history = history
        self.key = "bib_on" if history else "bib_off"
        self.code = "h" if history else "n"
        self.label = "Biboumi history %s" % ("on" if history else "off")
        self.forms = {}

    @property
    def server(self):
        return "127.0.0.1@%s" % self.domain

    def room(self, channel):
        return "%s%%127.0.0.1@%s" % (channel, self.domain)

    def start(self):
        user = gateway_user("_biboumi", "biboumi", "nobody")
        directory = self.new_directory(user)
        config = os.path.join(directory, "biboumi.cfg")
        with open(config, "w") as out:
            out.write("""hostname={domain}
password={secret}
xmpp_server_ip=127.0.0.1
port={component}
db_name={dir}/biboumi.sqlite
log_file={dir}/biboumi.log
log_level=1
identd_port=0
realname_customization=true
realname_from_jid=false
policy_directory={dir}
""".format(domain=self.domain, secret=self.bench.secret, component=self.bench.component_port,
           dir=directory))
        chown(directory, user)
        self.log_path = os.path.join(directory, "biboumi.log")
        self.process = self.bench.processes.start(
            as_user(user, [self.bench.arguments.biboumi, config]), cwd=directory,
            stdout=open(os.path.join(directory, "stdout.log"), "ab"), stderr=subprocess.STDOUT)

    async def prepare(self, clients):
        """Each user's settings for the IRC server (ngircd's port, no TLS, throttle off)
        and their history setting, with every other field sent back as it was."""
        server = {"ports": [str(self.bench.irc_port)], "tls_ports": [], "throttle_limit": ["-1"]}
        gateway = {"record_history": ["true" if self.history else "false"]}
        semaphore = asyncio.Semaphore(20)

        async def one(client):
            async with semaphore:
                fields, _ = await client.command(self.server, "configure", server)
                self.forms.setdefault("server", fields)
                fields, _ = await client.command(self.domain, "configure", gateway)
                self.forms.setdefault("gateway", fields)

        await asyncio.gather(*(one(client) for client in clients))

    def logs(self):
        try:
            with open(self.log_path, errors="replace") as text:
                # Its own shutdown closes every IRC connection with a warning each: not news.
                return [line.rstrip() for line in text if ("[ERROR]" in line or "[WARNING]" in line)
                        and "Connection closed." not in line]
        except OSError:
            return []


# --- the benchmark --------------------------------------------------------------------------------

class Bench:
    def __init__(self, arguments):
        self.arguments = arguments
        self.processes = Processes()
        self.directory = tempfile.mkdtemp(prefix="jabbridge-bench-irc.")
        os.chmod(self.directory, 0o755)
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.irc_port = free_port()
        self.secret = os.urandom(16).hex()
        self.users = max(max(arguments.steps), arguments.fanout_users, 1)
        self.clients = []
        self.prosody = None
        self.ngircd = None
        # A copy, so that a build running meanwhile cannot swap the binary under us.
        self.jabbridge_binary = os.path.join(self.directory, "jabbridge")
        shutil.copy2(arguments.jabbridge, self.jabbridge_binary)
        os.chmod(self.jabbridge_binary, 0o755)

    # servers
    def start_prosody(self):
        prosody = os.path.join(self.directory, "prosody")
        accounts = os.path.join(prosody, "data", "localhost", "accounts")
        os.makedirs(accounts)
        nagle = "" if self.arguments.prosody_nagle else "network_settings = { nagle = false }\n"
        components = "".join('Component "%s"\n    component_secret = "%s"\n' % (domain, self.secret)
                             for domain in (Jabbridge.domain, Biboumi.domain, FLOOR))
        with open(os.path.join(prosody, "prosody.cfg.lua"), "w") as config:
            config.write("""pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
log = {{ {{ levels = {{ min = "warn" }}, to = "file", filename = "{dir}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ {component} }}
component_interfaces = {{ "127.0.0.1" }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; }}
modules_disabled = {{ "s2s"; "s2s_auth_certs"; }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
{nagle}VirtualHost "localhost"
{components}""".format(dir=prosody, c2s=self.c2s_port, component=self.component_port, nagle=nagle,
                       components=components))
        for number in range(1, self.users + 1):
            with open(os.path.join(accounts, "u%d.dat" % number), "w") as account:
                account.write('return {\n\t["password"] = "bench";\n};\n')
        chown(prosody, "prosody")
        self.prosody = self.processes.start(
            as_user("prosody", ["prosody", "--config", os.path.join(prosody, "prosody.cfg.lua"), "-F"]),
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(prosody, "stderr.log"), "ab"))

    def start_ngircd(self):
        directory = os.path.join(self.directory, "ngircd")
        os.makedirs(directory)
        config = os.path.join(directory, "ngircd.conf")
        with open(config, "w") as out:
            out.write("[Global]\nName = %s\nInfo = bench\nListen = 127.0.0.1\nPorts = %d\n"
                      "[Limits]\nMaxPenaltyTime = 0\nMaxNickLength = 30\nMaxConnectionsIP = 0\n"
                      "MaxConnections = 0\nMaxJoins = 0\n"
                      "[Options]\nPAM = no\nIdent = no\nDNS = no\n" % (NETWORK, self.irc_port))
        chown(directory, "irc")
        self.ngircd = self.processes.start(
            as_user("irc", ["ngircd", "-n", "-f", config]), cwd=directory,
            stdout=open(os.path.join(directory, "stdout.log"), "ab"), stderr=subprocess.STDOUT)

    async def log_in(self):
        semaphore = asyncio.Semaphore(25)

        async def one(number):
            async with semaphore:
                client = Xmpp("u%d" % number, "localhost", "bench")
                await client.connect(self.c2s_port)
                await client.login()
                return client

        self.clients = await asyncio.gather(*(one(number) for number in range(1, self.users + 1)))

    def cleanup(self):
        for client in self.clients:
            client.close()
        self.processes.stop_all()
        if self.arguments.keep:
            log("files kept in " + self.directory)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    # helpers
    async def settle(self, pid, quiet=0.005, window=0.5, longest=20):
        """Waits until the process used under `quiet` CPU seconds in a `window`."""
        deadline = time.monotonic() + longest
        while time.monotonic() < deadline:
            before = cpu_snapshot(pid)
            await asyncio.sleep(window)
            if cpu_seconds(before, cpu_snapshot(pid)) < quiet:
                return True
        return False

    async def joins(self, gateway, clients, rooms, nicks):
        """Joins client i to rooms[i] as nicks[i], 10 at a time; the seconds it took."""
        semaphore = asyncio.Semaphore(10)
        timeout = self.arguments.timeout

        async def one(client, room, nick):
            async with semaphore:
                await client.join(room, nick, timeout)

        start = time.monotonic()
        await asyncio.gather(*(one(c, r, n) for c, r, n in zip(clients, rooms, nicks)))
        return time.monotonic() - start

    async def start_gateway(self, gateway):
        gateway.start()
        await gateway.ready(self.clients[0])

    # phases
    async def throughput(self, gateway, results):
        arguments = self.arguments
        code = gateway.code
        channel = "#%st" % code
        room = gateway.room(channel)
        users = self.clients[:arguments.fanout_users]
        await self.start_gateway(gateway)
        pid = gateway.process.pid
        try:
            await gateway.prepare(users)
            observer = Irc()
            await observer.connect(self.irc_port, "obs%st" % code, 10)
            await observer.join(channel, 10)
            try:
                sender = users[0]
                await sender.join(room, "%st1" % code, arguments.timeout)

                # Warm-up, then the measured run.
                await self.send_window(sender, room, observer, 200, "w", arguments.window)
                await self.settle(pid)
                log("%s: XMPP->IRC, %d rounds of %d messages, window %d"
                    % (gateway.label, arguments.rounds, arguments.messages, arguments.window))
                runs, cpu, prosody, ours = [], 0.0, 0.0, 0.0
                for _ in range(arguments.rounds):
                    await self.settle(pid)
                    prosody_before = cpu_snapshot(self.prosody.pid)
                    ours_before = own_cpu()
                    before = cpu_snapshot(pid)
                    run = await self.send_window(sender, room, observer, arguments.messages, "m", arguments.window)
                    cpu += cpu_seconds(before, cpu_snapshot(pid))
                    prosody += cpu_seconds(prosody_before, cpu_snapshot(self.prosody.pid))
                    ours += own_cpu() - ours_before
                    runs.append(run)
                    if run["received"] < run["sent"] or run["stalled"]:
                        break  # a gateway that lost lines would only lose more
                received = max(1, sum(run["received"] for run in runs))
                complete = [run for run in runs
                            if run["received"] == run["sent"] == run["reflected"] and not run["stalled"]]
                if complete:
                    figures = dict(sorted(complete, key=lambda run: run["rate"])[len(complete) // 2])
                else:
                    figures = dict(runs[-1], rate=None)
                figures.update(
                    rates=[run["rate"] for run in complete], rounds=len(runs), incomplete=[run for run in runs if run not in complete],
                    sent_total=sum(run["sent"] for run in runs), received_total=sum(run["received"] for run in runs),
                    cpu_us=cpu * 1e6 / received, prosody_cpu_us=prosody * 1e6 / received,
                    client_cpu_share=ours / max(1e-9, sum(run["wall_s"] or 0 for run in runs)))
                results["throughput"] = figures
                if hasattr(gateway, "metrics"):
                    results["metrics_after_throughput"] = gateway.metrics()

                # Fan-out IRC->XMPP to all the users in the channel.
                others = users[1:]
                joined = await self.joins(gateway, others, [room] * len(others),
                                          ["%st%d" % (code, n) for n in range(2, len(others) + 2)])
                await self.settle(pid)
                if not arguments.no_floor:
                    # The floor, measured just before, on the same machine load.
                    results["fanout_floor"] = await self.floor()

                async def say(text):
                    observer.send("PRIVMSG %s :%s" % (channel, text))

                results["fanout"] = await self.fanout(gateway.label, pid, users, say)
                results["fanout"]["join_s"] = joined
            finally:
                observer.close()
        finally:
            for client in users:
                client.on_message = None
            results["rss_after_throughput_kib"] = status_kib(pid, "VmRSS")
            gateway.stop()

    async def send_window(self, sender, room, observer, count, tag, window):
        """Sends `count` groupchat messages, at most `window` without their reflection."""
        timeout = self.arguments.timeout
        marker = (":%s%s " % (tag, os.urandom(3).hex())).encode()
        prefix = marker[1:].decode()
        observer.count, observer.last = 0, None
        observer.marker = marker
        state = {"reflected": 0, "last": None}
        freed = asyncio.Event()

        def on_message(element, body, read_at):
            if body.startswith(prefix):
                state["reflected"] += 1
                state["last"] = read_at
                freed.set()

        sender.on_message = on_message
        sent = 0
        stanzas_before = sender.stanzas
        start = time.monotonic()
        deadline = start + timeout
        batch = max(1, window // 4)
        # Unique ids; --reuse-ids numbers them from 0 in every round ("m0", "m1"…), as a client
        # whose counter restarts would.
        ids = (tag + "%d") if self.arguments.reuse_ids else (prefix.strip() + "-%d")
        stalled = False
        while sent < count:
            outstanding = sent - state["reflected"]
            room_left = min(window - outstanding, count - sent)
            if room_left >= batch or (room_left > 0 and sent + room_left == count):
                sender.send("".join(sender.groupchat(room, "%s%d" % (prefix, sent + number), ids % (sent + number))
                                    for number in range(room_left)))
                sent += room_left
                continue
            freed.clear()
            try:
                await asyncio.wait_for(freed.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                stalled = True
                break
        # Wait for every PRIVMSG (and reflection).
        while (observer.count < sent or state["reflected"] < sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        sender.on_message = None
        observer.marker = None
        end = observer.last
        wall = (end - start) if end else None
        return dict(sent=sent, received=observer.count, reflected=state["reflected"], stalled=stalled,
                    wall_s=wall, rate=(observer.count / wall) if wall else 0.0,
                    stanzas_to_sender_per_message=(sender.stanzas - stanzas_before) / max(1, sent),
                    reflections_end_s=(state["last"] - start) if state["last"] else None)

    async def fanout(self, label, pid, users, say):
        """`say(text)` sends one line to the channel; each user's copy is timed from then."""
        arguments = self.arguments
        lines, interval = arguments.lines, arguments.interval_ms / 1000
        log("%s: IRC->XMPP, %d lines to %d users, one every %d ms"
            % (label, lines, len(users), arguments.interval_ms))
        token = "lat%s " % os.urandom(3).hex()
        sent_at = {}
        latencies = []
        by_line = []

        def on_message(element, body, read_at):
            if body.startswith(token):
                number = int(body[len(token):])
                latencies.append(read_at - sent_at[number])
                by_line.append((number, latencies[-1]))

        for client in users:
            client.on_message = on_message
        before = cpu_snapshot(pid) if pid else None
        prosody_before = cpu_snapshot(self.prosody.pid)
        ours_before = own_cpu()
        start = time.monotonic()
        for number in range(lines):
            due = start + number * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[number] = time.monotonic()
            await say("%s%d" % (token, number))
        expected = lines * len(users)
        deadline = time.monotonic() + arguments.timeout
        while len(latencies) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        cpu = cpu_seconds(before, cpu_snapshot(pid)) if pid else None
        prosody = cpu_seconds(prosody_before, cpu_snapshot(self.prosody.pid))
        ours = own_cpu() - ours_before
        for client in users:
            client.on_message = None
        milliseconds = [latency * 1e3 for latency in latencies]
        received = max(1, len(latencies))
        if os.environ.get("BENCH_LATENCIES_DIR"):
            # A diagnostic: every copy's line number and latency, to tell a late line (all
            # its copies late) from late copies.
            name = "%s-%d.json" % (label.replace(" ", "_"), int(time.time()))
            with open(os.path.join(os.environ["BENCH_LATENCIES_DIR"], name), "w") as out:
                json.dump(dict(interval_ms=arguments.interval_ms, copies=by_line), out)
        return dict(users=len(users), lines=lines, expected=expected, received=len(latencies),
                    p50_ms=percentile(milliseconds, 0.5), p99_ms=percentile(milliseconds, 0.99),
                    max_ms=max(milliseconds) if milliseconds else None,
                    cpu_us_per_delivery=cpu * 1e6 / received if cpu is not None else None,
                    prosody_cpu_us_per_delivery=prosody * 1e6 / received,
                    client_cpu_us_per_delivery=ours * 1e6 / received)

    async def floor(self):
        """The fan-out's floor: the same lines to the same users, written by a bare XEP-0114
        component on the same Prosody, with no IRC server, store or logic in between: each
        line is one groupchat copy per user, shaped like a gateway's (the from, stanza-id and
        occupant-id a room message carries), each copy its own write (as a gateway writes
        them: one write of all 50 makes Prosody route them all before it sends the first)."""
        users = self.clients[:self.arguments.fanout_users]
        sock = socket.create_connection(("127.0.0.1", self.component_port), timeout=10)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(("<stream:stream xmlns='jabber:component:accept' xmlns:stream='%s' to='%s'>"
                          % (STREAM, FLOOR)).encode())
            received = b""
            while b"id=" not in received or b">" not in received[received.find(b"id="):]:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("Prosody closed the floor component's stream")
                received += chunk
            header = received.decode(errors="replace")
            stream_id = header.split("id=", 1)[1][1:].split(header.split("id=", 1)[1][0], 1)[0]
            digest = hashlib.sha1((stream_id + self.secret).encode()).hexdigest()
            sock.sendall(("<handshake>%s</handshake>" % digest).encode())
            while b"<handshake" not in received.split(b">", 1)[1]:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("Prosody refused the floor component")
                received += chunk
            sock.setblocking(False)  # nothing more is read; the sends are small
            room = "#floor%%%s@%s" % (NETWORK, FLOOR)
            occupant = base64.b64encode(os.urandom(32)).decode()

            async def say(text):
                for client in users:
                    stanza_id = str(uuid.uuid4())
                    sock.send(("<message type='groupchat' from='%s/observer' to='%s' id='%s'><body>%s</body>"
                               "<stanza-id xmlns='urn:xmpp:sid:0' id='%s' by='%s'/>"
                               "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='%s'/></message>"
                               % (room, client.jid, stanza_id, escape(text), stanza_id, room,
                                  occupant)).encode())

            return await self.fanout("a bare component", None, users, say)
        finally:
            sock.close()

    async def memory(self, gateway, results, shared):
        arguments = self.arguments
        code = gateway.code + ("c" if shared else "s")
        phase = "shared" if shared else "separate"
        await self.start_gateway(gateway)
        pid = gateway.process.pid
        figures = results.setdefault(phase, {})
        try:
            clients = self.clients[:max(arguments.steps)]
            await gateway.prepare(clients)
            await self.settle(pid)
            await asyncio.sleep(0.5)
            base = status_kib(pid, "VmRSS")
            base_anon, base_file = status_kib(pid, "RssAnon") or 0, status_kib(pid, "RssFile") or 0
            figures["rss_before_kib"] = base
            figures["steps"] = {}
            dump_smaps(pid, "%s-%s-0" % (gateway.code, phase))
            done = 0
            for step in sorted(arguments.steps):
                batch = clients[done:step]
                rooms = [gateway.room("#%sall" % code if shared else "#%s%d" % (code, done + n + 1))
                         for n in range(len(batch))]
                nicks = ["%s%d" % (code, done + n + 1) for n in range(len(batch))]
                before = cpu_snapshot(pid)
                seconds = await self.joins(gateway, batch, rooms, nicks)
                await self.settle(pid)
                cpu = cpu_seconds(before, cpu_snapshot(pid))
                await asyncio.sleep(0.5)
                rss = status_kib(pid, "VmRSS")
                dump_smaps(pid, "%s-%s-%d" % (gateway.code, phase, step))
                # Where the growth is: anonymous memory (heap, stacks) or the binary's and
                # libraries' pages touched for the first time (RssFile, shared with nobody here).
                anon = (status_kib(pid, "RssAnon") or 0) - base_anon
                mapped = (status_kib(pid, "RssFile") or 0) - base_file
                done = step
                figures["steps"][str(step)] = dict(
                    rss_kib=rss, per_user_kib=(rss - base) / step, join_s=seconds,
                    anon_per_user_kib=anon / step, file_per_user_kib=mapped / step,
                    join_cpu_ms_per_user=cpu * 1e3 / max(1, len(batch)))
                log("%s: %s, %d users joined: RSS %+.0f KiB (%.1f KiB/user: anonymous %.1f, files %.1f), joins %.2f s"
                    % (gateway.label, phase, step, rss - base, (rss - base) / step, anon / step,
                       mapped / step, seconds))
            if shared and arguments.idle_seconds > 0:
                log("%s: idle, %d users joined, %d s" % (gateway.label, done, arguments.idle_seconds))
                before = cpu_snapshot(pid)
                await asyncio.sleep(arguments.idle_seconds)
                cpu = cpu_seconds(before, cpu_snapshot(pid))
                results["idle"] = dict(users=done, seconds=arguments.idle_seconds, cpu_s=cpu,
                                       us_per_user_per_s=cpu * 1e6 / done / arguments.idle_seconds)
            figures["peak_rss_kib"] = status_kib(pid, "VmHWM")
        finally:
            gateway.stop()

    async def run(self):
        self.start_ngircd()
        self.start_prosody()
        await wait_for(lambda: listening(self.c2s_port) and listening(self.component_port)
                       and listening(self.irc_port), 15, "Prosody and ngircd to listen")
        log("logging %d XMPP users in" % self.users)
        await self.log_in()
        gateways = {"jabbridge": Jabbridge(self), "bib_on": Biboumi(self, True), "bib_off": Biboumi(self, False)}
        contenders = [gateways[key] for key in self.arguments.only.split(",") if key]
        results = {gateway.key: {} for gateway in contenders}
        phases = [("throughput", lambda g, r: self.throughput(g, r)),
                  ("separate", lambda g, r: self.memory(g, r, False)),
                  ("shared", lambda g, r: self.memory(g, r, True))]
        # The throughput phase runs in passes, each contender once per pass (A B C A B C): the
        # machine's speed drifts over minutes, and one pass each would measure the drift.
        passes = {gateway.key: [] for gateway in contenders}
        for phase, run in phases:
            rounds = self.arguments.passes if phase == "throughput" else 1
            for number, gateway in [(n, g) for n in range(rounds) for g in contenders]:
                result = results[gateway.key]
                if phase == "throughput":
                    result = {}
                    passes[gateway.key].append(result)
                log("%s: %s%s" % (gateway.label, phase, " (pass %d of %d)" % (number + 1, rounds)
                                  if rounds > 1 else ""))
                started = time.monotonic()
                machine_before, ours_before = busy_ticks(), our_ticks()
                try:
                    await asyncio.wait_for(run(gateway, result), self.arguments.phase_timeout)
                except Exception as error:  # noqa: BLE001 - report it and go on
                    text = "%s: %s" % (type(error).__name__, error)
                    log("%s: %s failed: %s" % (gateway.label, phase, text))
                    result.setdefault("errors", {})[phase] = text
                    gateway.stop()
                wall = time.monotonic() - started
                result.setdefault("phase_s", {})[phase] = wall
                foreign = (busy_ticks() - machine_before) - (our_ticks() - ours_before)
                result.setdefault("foreign_cpu_share", {})[phase] = max(
                    0.0, foreign / TICKS / max(wall, 1e-9) / os.cpu_count())
                lines = gateway.logs()
                if lines:
                    result.setdefault("log", {})[phase] = lines[:40]
                    result.setdefault("log_counts", {})[phase] = len(lines)
                await asyncio.sleep(0.5)  # its IRC connections are gone before the next one
            if phase == "throughput":
                for gateway in contenders:
                    merge_passes(results[gateway.key], passes[gateway.key])
        forms = {g.key: {name: sorted(fields) for name, fields in g.forms.items()}
                 for g in contenders if isinstance(g, Biboumi) and g.forms}
        if forms:
            results["_biboumi_forms"] = forms
        return results, contenders


# --- the table ------------------------------------------------------------------------------------

def get(results, key, *path):
    value = results.get(key, {})
    for step in path:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def table(results, arguments):
    keys = [k for k in ("jabbridge", "bib_on", "bib_off") if k in results]
    labels = {"jabbridge": "Jabbridge", "bib_on": "Biboumi hist on", "bib_off": "Biboumi hist off"}
    rows = []

    def biboumi(*path, pick=min):
        values = [get(results, k, *path) for k in ("bib_on", "bib_off")]
        values = [v for v in values if v is not None]
        return pick(values) if values else None

    def judged(value, bound, at_least, digits):
        if value is None or bound is None:
            return fmt(value, digits)
        ok = value >= bound if at_least else value <= bound
        return fmt(value, digits) + (" ok" if ok else " MISS")

    def row(label, path, digits=0, target="", bound=None, at_least=False):
        cells = {}
        for k in keys:
            value = get(results, k, *path)
            cells[k] = judged(value, bound, at_least, digits) if k == "jabbridge" else fmt(value, digits)
        rows.append((label, cells, target))

    def ratio_text(value, other, text):
        if value is None or not other:
            return text
        return "%s (now %.2fx)" % (text, value / other)

    # 1. XMPP -> IRC
    rate_off = get(results, "bib_off", "throughput", "rate")
    row("XMPP->IRC msg/s, median of %d x %s (window %d)" % (arguments.rounds * arguments.passes, fmt(arguments.messages),
                                                           arguments.window),
        ("throughput", "rate"), 0,
        ratio_text(get(results, "jabbridge", "throughput", "rate"), rate_off, ">= Biboumi hist off"),
        rate_off, True)
    rows.append(("  range over the rounds", {k: "%s-%s" % (fmt(min(get(results, k, "throughput", "rates"))),
                                                            fmt(max(get(results, k, "throughput", "rates"))))
                                         if get(results, k, "throughput", "rates") else "-" for k in keys}, ""))
    cpu_on = get(results, "bib_on", "throughput", "cpu_us")
    row("  gateway CPU us per message", ("throughput", "cpu_us"), 1,
        ratio_text(get(results, "jabbridge", "throughput", "cpu_us"), cpu_on, "<= 1/5 of Biboumi hist on"),
        cpu_on / 5 if cpu_on else None)
    row("  Prosody CPU us per message", ("throughput", "prosody_cpu_us"), 1)
    # 2. RSS
    for phase, title in (("separate", "own channel each"), ("shared", "one shared channel")):
        row("RSS before joins (MiB), %s" % title, (phase, "rss_before_kib"), 1)
        rows[-1] = (rows[-1][0], {k: fmt((get(results, k, phase, "rss_before_kib") or 0) / 1024, 1)
                                  if get(results, k, phase, "rss_before_kib") else "-" for k in keys}, "")
        for step in sorted(arguments.steps):
            bound, target = None, ""
            if phase == "shared" and step == max(arguments.steps):
                other = biboumi(phase, "steps", str(step), "per_user_kib")
                bound = other / 4 if other else None
                target = ratio_text(get(results, "jabbridge", phase, "steps", str(step), "per_user_kib"), other,
                                    "<= 1/4 of Biboumi's (lower run)")
            row("  RSS KiB per user at %d" % step, (phase, "steps", str(step), "per_user_kib"), 1, target, bound)
        steps = sorted(arguments.steps)
        if len(steps) > 1:
            # What each further user adds, without what the first ones paid once (caches
            # warming, the allocator's arenas).
            low, high = steps[-2], steps[-1]

            def marginal(k):
                a = get(results, k, phase, "steps", str(low), "rss_kib")
                b = get(results, k, phase, "steps", str(high), "rss_kib")
                return fmt((b - a) / (high - low), 1) if a is not None and b is not None else "-"
            rows.append(("  RSS KiB per further user, %d to %d" % (low, high), {k: marginal(k) for k in keys}, ""))
        top = str(max(arguments.steps))

        def split(k):
            anon = get(results, k, phase, "steps", top, "anon_per_user_kib")
            mapped = get(results, k, phase, "steps", top, "file_per_user_kib")
            return "%s / %s" % (fmt(anon, 1), fmt(mapped, 1)) if anon is not None and mapped is not None else "-"
        rows.append(("  of it at %s: anonymous / files" % top, {k: split(k) for k in keys}, ""))
        row("  %s joins took (s)" % top, (phase, "steps", top, "join_s"), 2)
        row("  gateway CPU ms per join, last step", (phase, "steps", top, "join_cpu_ms_per_user"), 2)
    # 3. IRC -> XMPP
    row("IRC->XMPP p50 ms (%d users, %d lines / %d ms)" % (arguments.fanout_users, arguments.lines, arguments.interval_ms),
        ("fanout", "p50_ms"), 2, "<= 2 ms", 2.0)
    row("IRC->XMPP p99 ms", ("fanout", "p99_ms"), 2)
    row("  the same lines through a bare component, just before: p50 ms", ("fanout_floor", "p50_ms"), 2)
    row("    its p99 ms", ("fanout_floor", "p99_ms"), 2)

    def above(k):
        ours, floor = get(results, k, "fanout", "p50_ms"), get(results, k, "fanout_floor", "p50_ms")
        return fmt(ours - floor, 2) if ours is not None and floor is not None else "-"
    rows.append(("  p50 above the bare component's (ms)", {k: above(k) for k in keys}, ""))
    row("  gateway CPU us per delivered stanza", ("fanout", "cpu_us_per_delivery"), 1)
    row("  Prosody CPU us per delivered stanza", ("fanout", "prosody_cpu_us_per_delivery"), 1)
    # 4. idle
    idle = biboumi("idle", "us_per_user_per_s")
    row("idle CPU us per user per s (%d users, %d s)" % (max(arguments.steps), arguments.idle_seconds),
        ("idle", "us_per_user_per_s"), 1,
        ratio_text(get(results, "jabbridge", "idle", "us_per_user_per_s"), idle, "<= 1/10 of Biboumi's (lower run)"),
        idle / 10 if idle else None)

    headers = ["", *[labels[k] for k in keys], "target"]
    widths = [max(len(headers[0]), *(len(r[0]) for r in rows))]
    for k in keys:
        widths.append(max(len(labels[k]), *(len(r[1][k]) for r in rows)))
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
             + "  target"]
    lines.append("  ".join("-" * w for w in widths) + "  ------")
    for label, cells, target in rows:
        lines.append("  ".join([label.ljust(widths[0])] + [cells[k].rjust(w) for k, w in zip(keys, widths[1:])]
                               + [target]).rstrip())
    return "\n".join(lines)


def notes(results, arguments):
    out = []
    for key, result in results.items():
        if key.startswith("_"):
            continue
        for phase, error in result.get("errors", {}).items():
            out.append("%s: %s FAILED: %s" % (key, phase, error))
        tp = result.get("throughput")
        if tp:
            for run in tp.get("incomplete", []):
                out.append("%s: XMPP->IRC round %d of %d: %d sent, %d PRIVMSGs received, %d reflections%s "
                           "(left out of the figures)"
                           % (key, tp["rounds"], arguments.rounds * arguments.passes, run["sent"], run["received"],
                              run["reflected"],
                              ", then nothing for %d s" % arguments.timeout if run["stalled"] else ""))
            if tp.get("client_cpu_share", 0) > 0.85:
                out.append("%s: throughput: the clients' process used %.0f%% of a core: it may set the pace"
                           % (key, 100 * tp["client_cpu_share"]))
        for phase, foreign in result.get("foreign_cpu_share", {}).items():
            if foreign > 0.05:
                out.append("%s: other processes used %.0f%% of the machine during %s: these figures are "
                           "low (CPU per unit less so)" % (key, 100 * foreign, phase))
        fan = result.get("fanout")
        if fan and fan["received"] != fan["expected"]:
            out.append("%s: fan-out: %d of %d deliveries arrived" % (key, fan["received"], fan["expected"]))
        for phase, count in result.get("log_counts", {}).items():
            out.append("%s: %d warning/error log lines during %s (first: %s)"
                       % (key, count, phase, result["log"][phase][0][:200]))
    return "\n".join(out)


def versions(arguments):
    out = []
    try:
        out.append(subprocess.run([arguments.jabbridge, "--version"], capture_output=True, text=True,
                                  timeout=10).stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    for package in ("biboumi", "prosody", "ngircd"):
        try:
            version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                                     text=True, timeout=10).stdout.strip()
            if version:
                out.append("%s %s" % (package, version))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ", ".join(out)


def merge_passes(result, passes):
    """Folds the throughput phase's passes into `result`: the median over every pass's
    rounds, CPU per message and the fan-out's figures averaged over the passes, the
    bookkeeping summed or kept at its worst; the rest as the last pass left it."""
    def mean(values):
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return sum(values) / len(values) if values else None

    for one in passes:
        for key, value in one.items():
            if key in ("errors", "log", "log_counts"):
                result.setdefault(key, {}).update(value)
            elif key not in ("throughput", "fanout", "fanout_floor", "phase_s", "foreign_cpu_share"):
                result[key] = value
    result.setdefault("phase_s", {})["throughput"] = sum(
        one.get("phase_s", {}).get("throughput", 0) for one in passes)
    result.setdefault("foreign_cpu_share", {})["throughput"] = max(
        [one.get("foreign_cpu_share", {}).get("throughput", 0) for one in passes] or [0])
    figures = [one["throughput"] for one in passes if "throughput" in one]
    if figures:
        merged = dict(figures[-1])
        rates = sorted(rate for figure in figures for rate in figure.get("rates", []) if rate)
        merged["rates"] = rates
        merged["rate"] = rates[len(rates) // 2] if rates else None
        for key in ("cpu_us", "prosody_cpu_us", "client_cpu_share"):
            merged[key] = mean(figure.get(key) for figure in figures)
        merged["rounds"] = sum(figure.get("rounds", 0) for figure in figures)
        merged["incomplete"] = [run for figure in figures for run in figure.get("incomplete", [])]
        merged["passes"] = [{key: figure.get(key) for key in ("rate", "cpu_us", "prosody_cpu_us")}
                            for figure in figures]
        result["throughput"] = merged
    for key in ("fanout", "fanout_floor"):
        parts = [one[key] for one in passes if key in one]
        if parts:
            merged = dict(parts[-1])
            for field in parts[-1]:
                if mean([parts[-1][field]]) is not None:
                    merged[field] = mean(part.get(field) for part in parts)
            result[key] = merged


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jabbridge", required=True, help="the release binary")
    parser.add_argument("--biboumi", default="/usr/bin/biboumi")
    parser.add_argument("--jabbridge-log", default="info", help="Jabbridge's log level")
    parser.add_argument("--messages", type=int, default=5000, help="XMPP->IRC messages (N)")
    parser.add_argument("--rounds", type=int, default=3, help="XMPP->IRC rounds (the median rate is shown)")
    parser.add_argument("--passes", type=int, default=2,
                        help="passes of the throughput phase, the contenders alternating (A B C A B C)")
    parser.add_argument("--window", type=int, default=100, help="messages without their reflection")
    parser.add_argument("--steps", default="1,50,200", help="users joined at each RSS step")
    parser.add_argument("--fanout-users", type=int, default=50, help="XMPP users in the IRC->XMPP channel")
    parser.add_argument("--lines", type=int, default=200, help="IRC->XMPP lines (M)")
    parser.add_argument("--interval-ms", type=int, default=20, help="between IRC->XMPP lines")
    parser.add_argument("--idle-seconds", type=int, default=20)
    parser.add_argument("--timeout", type=int, default=60, help="seconds any one wait may take")
    parser.add_argument("--phase-timeout", type=int, default=240, help="seconds one phase of one gateway may take")
    parser.add_argument("--only", default="jabbridge,bib_on,bib_off", help="contenders to run")
    parser.add_argument("--reuse-ids", action="store_true",
                        help="give each XMPP->IRC round the same message ids (m0, m1…)")
    parser.add_argument("--no-floor", action="store_true",
                        help="leave out the bare component's fan-out (the IRC->XMPP floor)")
    parser.add_argument("--prosody-nagle", action="store_true", help="leave Nagle on in Prosody")
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    arguments = parser.parse_args()
    arguments.steps = sorted({int(step) for step in arguments.steps.split(",") if step})
    if arguments.fanout_users < 1 or not arguments.steps or min(arguments.steps) < 1 or arguments.passes < 1:
        parser.error("--fanout-users, --steps and --passes must be at least 1")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    started = time.monotonic()
    bench = Bench(arguments)
    fsync_before = fsync_ms(bench.directory)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        results, _ = loop.run_until_complete(bench.run())
    finally:
        bench.cleanup()
    results["_run"] = dict(seconds=time.monotonic() - started, machine=machine(fsync_before), versions=versions(arguments),
                           arguments={k: v for k, v in vars(arguments).items()})
    if arguments.json:
        with open(arguments.json, "w") as out:
            json.dump(results, out, indent=2)
    print()
    print(machine(fsync_before))
    print(versions(arguments))
    print("One Prosody (%s), one ngircd (throttle off); each gateway started afresh per phase; %.0f s in all"
          % ("Nagle on" if arguments.prosody_nagle else "Nagle off", results["_run"]["seconds"]))
    print(table(results, arguments))
    extra = notes(results, arguments)
    if extra:
        print()
        print(extra)


if __name__ == "__main__":
    main()
