#!/usr/bin/python3
"""The driver of scripts/bench: runs every contender through one Prosody with the same
clients and prints one table. Run it through scripts/bench (which installs and builds what
it needs); it must run as root, to start Prosody and PostgreSQL as their own users.

Contenders, one after another, each on its own component domain of the same Prosody:
  null    examples/null_component.rs: echoes, stores nothing (the ceiling);
  sqlite  Jabbridge's echo bridge on SQLite;
  pg      Jabbridge's echo bridge on a throw-away PostgreSQL.
Jabbridge also gets its `say` webhook measured (examples/say_load.rs) and the drain of a
backlog queued while Prosody was down. Everything is on loopback, bounded in count and time,
and removed on exit."""

import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")
PREFIX = "echo: "


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + what)


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def busy_ticks():
    """CPU ticks the whole machine spent busy, all cores together."""
    with open("/proc/stat") as stat:
        fields = [int(field) for field in stat.readline().split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]


def tree_ticks(root):
    """CPU ticks of a process and its children, living and reaped (PostgreSQL's backends)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == root:
            total += sum(int(field) for field in fields[11:15])
        elif int(fields[1]) == root:
            total += int(fields[11]) + int(fields[12])
    return total


def metrics(http_port):
    """Jabbridge's counters and gauges from /metrics, as {"name{labels}": value}."""
    try:
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % http_port, timeout=5).read()
    except OSError:
        return {}
    figures = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            figures[name] = float(value)
    return figures


def our_ticks(postmaster):
    """CPU ticks of this driver and every process it started (living, and reaped ones through
    cutime/cstime), plus the PostgreSQL server's, which is not our child."""
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
    total = sum(stats[pid][1] for pid in ours if pid in stats)
    return total + (tree_ticks(postmaster) if postmaster else 0)


def fsync_ms(directory):
    """The mean time of a small write + fdatasync in `directory`, over ~0.3 s: what each
    PostgreSQL commit waits for (and SQLite's checkpoints)."""
    path = os.path.join(directory, "fsync-probe")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        count, start = 0, time.monotonic()
        while time.monotonic() - start < 0.3:
            os.write(descriptor, b"x" * 128)
            os.fdatasync(descriptor)
            count += 1
        return (time.monotonic() - start) * 1e3 / count
    finally:
        os.close(descriptor)
        os.unlink(path)


class Watch:
    """The share of the machine that other processes used during a phase."""

    def __init__(self, bench, results, phase):
        self.bench, self.results, self.phase = bench, results, phase

    def __enter__(self):
        self.start = (time.monotonic(), busy_ticks(), our_ticks(self.bench.postmaster))
        return self

    def __exit__(self, *_):
        wall = time.monotonic() - self.start[0]
        machine = busy_ticks() - self.start[1]
        ours = our_ticks(self.bench.postmaster) - self.start[2]
        share = max(0.0, (machine - ours) / TICKS / max(wall, 1e-9) / os.cpu_count())
        self.results.setdefault("foreign_cpu_share", {})[self.phase] = share
        self.results.setdefault("fsync_ms", {})[self.phase] = fsync_ms(self.bench.directory)
        return False


def share(count, clients, number):
    """How many of `count` requests say_load gives to user `number` (request i: i mod clients)."""
    return count // clients + (1 if number < count % clients else 0)


def status_kib(pid, key):
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def log(text):
    sys.stderr.write("--> %s\n" % text)
    sys.stderr.flush()


class Processes:
    """Every process started, so that all of them stop on exit whatever happens."""

    def __init__(self):
        self.running = []

    def start(self, argv, **kwargs):
        process = subprocess.Popen(argv, **kwargs)
        self.running.append(process)
        return process

    def stop(self, process, timeout=10):
        if process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self):
        for process in reversed(list(self.running)):
            self.stop(process, timeout=5)


class Client:
    """One tests/client/bench.py process: JSON commands in, JSON events out."""

    def __init__(self, processes, directory, jid, c2s_port, register):
        self.processes = processes
        self.jid = jid
        self.events = queue.Queue()
        stderr = open(os.path.join(directory, "client-%s.log" % jid.split("@")[0]), "ab")
        self.process = processes.start(
            [sys.executable, os.path.join(os.path.dirname(__file__), "bench.py"), "--jid", jid,
             "--password", "bench", "--port", str(c2s_port), "--register", ",".join(register)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.process.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass
        self.events.put({"event": "exited"})

    def send(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def expect(self, event, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("%s: no %s within %.0f s" % (self.jid, event, timeout))
            if got["event"] == event:
                return got
            if got["event"] in ("exited", "disconnected"):
                raise RuntimeError("%s: the client stopped while waiting for %s" % (self.jid, event))

    def stop(self):
        try:
            self.send(cmd="quit")
            self.process.wait(3)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.processes.stop(self.process)


class Bench:
    def __init__(self, arguments):
        self.arguments = arguments
        self.processes = Processes()
        self.directory = tempfile.mkdtemp(prefix="jabbridge-bench.")
        os.chmod(self.directory, 0o755)
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.secret = os.urandom(16).hex()
        self.token = os.urandom(16).hex()
        self.users = ["bench%d@localhost" % number for number in range(1, arguments.clients + 1)]
        self.prosody = None
        self.postgres = None
        self.postmaster = None

    # --- servers ---------------------------------------------------------------------------

    def write_prosody_config(self):
        prosody = os.path.join(self.directory, "prosody")
        accounts = os.path.join(prosody, "data", "localhost", "accounts")
        os.makedirs(accounts, exist_ok=True)
        components = "".join(
            'Component "%s.localhost"\n    component_secret = "%s"\n' % (name, self.secret)
            for name in ("null", "sqlite", "pg", "ext", "occupants"))
        nagle = "" if self.arguments.prosody_nagle else "network_settings = { nagle = false }\n"
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
{components}""".format(dir=prosody, c2s=self.c2s_port, component=self.component_port,
                       nagle=nagle, components=components))
        for user in self.users:
            with open(os.path.join(accounts, user.split("@")[0] + ".dat"), "w") as account:
                account.write('return {\n\t["password"] = "bench";\n};\n')
        subprocess.run(["chown", "-R", "prosody:prosody", prosody], check=True)

    def start_prosody(self):
        prosody = os.path.join(self.directory, "prosody")
        self.prosody = self.processes.start(
            ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups", "prosody",
             "--config", os.path.join(prosody, "prosody.cfg.lua"), "-F"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(prosody, "stderr.log"), "ab"))
        wait_until(lambda: listening(self.component_port) and listening(self.c2s_port), 10,
                   "Prosody to listen")

    def stop_prosody(self):
        self.processes.stop(self.prosody)
        wait_until(lambda: not listening(self.c2s_port), 10, "Prosody to stop")

    def start_postgres(self):
        pg_bin = sorted(
            (path for path in (os.path.join("/usr/lib/postgresql", version, "bin")
                               for version in os.listdir("/usr/lib/postgresql"))
             if os.path.exists(os.path.join(path, "pg_ctl"))),
            key=lambda path: [int(part) for part in re.findall(r"\d+", path)])[-1]
        directory = os.path.join(self.directory, "pg")
        os.makedirs(directory)
        shutil.chown(directory, "postgres", "postgres")
        port = free_port()
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run(as_postgres + [pg_bin + "/initdb", "-D", directory + "/data", "-A", "trust",
                                      "-U", "postgres"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(as_postgres + [pg_bin + "/pg_ctl", "-D", directory + "/data", "-l",
                                      directory + "/log", "-w", "-o",
                                      "-p %d -k %s -c listen_addresses=127.0.0.1" % (port, directory),
                                      "start"], check=True, stdout=subprocess.DEVNULL)
        self.postgres = (as_postgres + [pg_bin + "/pg_ctl", "-D", directory + "/data", "-m", "fast",
                                        "-w", "stop"])
        with open(directory + "/data/postmaster.pid") as pidfile:
            self.postmaster = int(pidfile.readline())
        return "postgres://postgres@127.0.0.1:%d/postgres" % port

    def cleanup(self):
        self.processes.stop_all()
        if self.postgres:
            subprocess.run(self.postgres, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.arguments.keep:
            log("files kept in " + self.directory)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- contenders ------------------------------------------------------------------------

    def start_null(self):
        logfile = os.path.join(self.directory, "null.log")
        process = self.processes.start(
            [self.arguments.null_component, "127.0.0.1:%d" % self.component_port, "null.localhost",
             PREFIX],
            env=dict(os.environ, NULL_SECRET=self.secret), stdout=subprocess.DEVNULL,
            stderr=open(logfile, "ab"))
        wait_until(lambda: "connected" in open(logfile).read() or process.poll() is not None, 10,
                   "the null component to connect")
        if process.poll() is not None:
            raise RuntimeError("the null component stopped: see " + logfile)
        return process

    def start_jabbridge(self, name, database_url, external=False):
        http_port = free_port()
        if external:
            # The Python reference bridge, as a child process (protocol v1 over stdio).
            bridge = """kind = "external"
command = ["python3", "{path}"]
settings = {{ prefix = "{prefix}" }}""".format(
                path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                  "examples", "external-python", "bridge.py"),
                prefix=PREFIX)
        else:
            bridge = 'kind = "echo"\nprefix = "{prefix}"\nsay_token = "{token}"'.format(
                prefix=PREFIX, token=self.token)
        config = os.path.join(self.directory, name + ".toml")
        with open(config, "w") as out:
            out.write("""[xmpp]
server = "127.0.0.1:{component}"
reconnect_max = "2s"
[database]
url = "{database}"
[http]
listen = "127.0.0.1:{http}"
[[bridge]]
domain = "{name}.localhost"
secret = "{secret}"
allow = ["localhost", "occupants.localhost"]
admins = ["{admin}"]
{bridge}
""".format(component=self.component_port, database=database_url, http=http_port, name=name,
           secret=self.secret, admin=self.users[0], bridge=bridge))
        process = self.processes.start(
            [self.arguments.jabbridge, "run", "--config", config], stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.directory, name + ".log"), "ab"))

        def ready():
            if process.poll() is not None:
                raise RuntimeError("jabbridge stopped: see %s/%s.log" % (self.directory, name))
            try:
                return urllib.request.urlopen("http://127.0.0.1:%d/ready" % http_port, timeout=1).status == 200
            except OSError:
                return False

        wait_until(ready, 60, "jabbridge to be ready")
        process.http_port = http_port
        return process

    def clients(self, register):
        clients = [Client(self.processes, self.directory, user, self.c2s_port, register)
                   for user in self.users]
        for client in clients:
            client.expect("ready", 90)
        return clients

    def stop_clients(self, clients):
        for client in clients:
            client.stop()

    # --- measurements ----------------------------------------------------------------------

    def echo(self, name, domain, process, clients, results):
        arguments = self.arguments
        # Latency first, on an idle contender: one client at a fixed rate.
        count = int(arguments.rate * arguments.rate_seconds)
        log("%s: latency, %d messages at %d/s" % (name, count, arguments.rate))
        clients[0].send(cmd="rate", domain=domain, contacts=arguments.contacts, count=count, rate=arguments.rate,
                        at=time.monotonic() + 0.2, timeout=arguments.timeout)
        figures = clients[0].expect("rate", arguments.timeout + 30)
        if figures["end"] is not None and figures["end"] > figures["start"]:
            figures["replies_per_s"] = figures["received"] / (figures["end"] - figures["start"])
        results["latency"] = figures
        # Throughput: every client at once, as fast as they can, over many conversations; in
        # several rounds, to show how much the figure varies. CPU is counted over all rounds.
        per_client = arguments.messages // arguments.rounds // len(clients)
        log("%s: throughput, %d rounds of %d messages from %d client(s)"
            % (name, arguments.rounds, per_client * len(clients), len(clients)))
        others = [self.prosody.pid] + [client.process.pid for client in clients]
        database = self.postmaster if name == "pg" else None
        totals = dict(sent=0, received=0, wall=0.0, own=0, prosody=0, clients=0, database=0,
                      children=0)
        rates = []
        for _ in range(arguments.rounds):
            time.sleep(0.5)
            start = time.monotonic() + 0.3
            others_before = [cpu_ticks(pid) for pid in others]
            database_before = tree_ticks(database) if database else 0
            before = cpu_ticks(process.pid)
            # An external bridge's process (and anything else Jabbridge started).
            children_before = tree_ticks(process.pid) - before
            for client in clients:
                client.send(cmd="echo", domain=domain, contacts=arguments.contacts, count=per_client,
                            at=start, timeout=arguments.timeout)
            runs = [client.expect("echo", arguments.timeout + 30) for client in clients]
            after = cpu_ticks(process.pid)
            children_after = tree_ticks(process.pid) - after
            others_after = [cpu_ticks(pid) for pid in others]
            received = sum(run["received"] for run in runs)
            ends = [run["end"] for run in runs if run["end"] is not None]
            elapsed = (max(ends) - start) if ends else 0.0
            rates.append(received / elapsed if elapsed else 0.0)
            totals["sent"] += sum(run["sent"] for run in runs)
            totals["received"] += received
            totals["wall"] += elapsed
            totals["own"] += after - before
            totals["children"] += children_after - children_before
            totals["prosody"] += others_after[0] - others_before[0]
            totals["clients"] += sum(a - b for a, b in zip(others_after[1:], others_before[1:]))
            totals["database"] += tree_ticks(database) - database_before if database else 0
            if received < per_client * len(clients):
                break  # a contender that lost replies would only lose more
        received = max(1, totals["received"])
        if hasattr(process, "http_port"):
            results["metrics_after_echo"] = metrics(process.http_port)

        def per_message(ticks):
            return ticks / TICKS * 1e6 / received

        results["echo"] = dict(
            sent=totals["sent"], received=totals["received"],
            rate=sorted(rates)[len(rates) // 2], rates=rates,
            cpu_us=per_message(totals["own"]),
            prosody_cpu_us=per_message(totals["prosody"]),
            clients_cpu_us=per_message(totals["clients"]),
            children_cpu_us=per_message(totals["children"]),
            database_cpu_us=per_message(totals["database"]) if database else None,
            wall_s=totals["wall"])

    def say(self, name, domain, process, clients, results):
        arguments = self.arguments
        users = ",".join(self.users)
        expected = [0] * len(clients)

        def say_load(count, extra, id_prefix):
            command = [arguments.say_load, "--addr", "127.0.0.1:%d" % process.http_port,
                       "--domain", domain, "--users", users, "--count", str(count),
                       "--contacts", str(arguments.contacts), "--id-prefix", id_prefix,
                       "--timeout", str(arguments.timeout)] + extra
            output = subprocess.run(command, env=dict(os.environ, SAY_TOKEN=self.token), check=True,
                                    stdout=subprocess.PIPE, text=True,
                                    timeout=arguments.timeout + 30).stdout
            return json.loads(output.strip().splitlines()[-1])

        def delivered(accepted):
            # Wait until the clients have every message said so far (the inbox is empty).
            # say_load gives request i to user i mod clients.
            for number, client in enumerate(clients):
                expected[number] += share(accepted, len(clients), number)
                client.send(cmd="wait", total=expected[number], timeout=arguments.timeout)
            return [client.expect("wait", arguments.timeout + 30) for client in clients]

        for client in clients:
            client.send(cmd="reset")
            client.expect("reset", 10)
        log("%s: say webhook, %d requests over %d connections" % (name, arguments.say, arguments.say_concurrency))
        before = cpu_ticks(process.pid)
        burst = say_load(arguments.say, ["--concurrency", str(arguments.say_concurrency)], "burst")
        waits = delivered(burst["accepted"])
        after = cpu_ticks(process.pid)
        burst["cpu_us_total"] = (after - before) / TICKS * 1e6 / max(1, burst["accepted"])
        burst["delivered"] = sum(wait["received"] for wait in waits)
        results["say"] = burst
        time.sleep(0.5)
        count = int(arguments.say_rate * arguments.rate_seconds)
        log("%s: say webhook, %d requests at %d/s" % (name, count, arguments.say_rate))
        paced = say_load(count, ["--concurrency", "64", "--rate", str(arguments.say_rate)], "paced")
        waits = delivered(paced["accepted"])
        paced["delivered"] = sum(wait["received"] for wait in waits) - burst["delivered"]
        results["say_paced"] = paced
        # Start the drain from an empty inbox.
        for client in clients:
            client.send(cmd="reset")
            client.expect("reset", 10)
        return say_load

    def room(self, name, domain, process, results):
        # Fan-out: users of a component of ours (one connection) join one room through
        # Prosody; foreign lines said in it reach each of them.
        arguments = self.arguments
        log("%s: room fan-out, %d lines to %d joined users" % (name, arguments.room_messages, arguments.room_users))
        command = [arguments.room_load, "--server", "127.0.0.1:%d" % self.component_port,
                   "--domain", "occupants.localhost", "--bridge", domain,
                   "--http", "127.0.0.1:%d" % process.http_port, "--pid", str(process.pid),
                   "--server-pid", str(self.prosody.pid),
                   "--users", str(arguments.room_users), "--messages", str(arguments.room_messages),
                   "--timeout", str(arguments.timeout)]
        output = subprocess.run(command, env=dict(os.environ, ROOM_SECRET=self.secret, SAY_TOKEN=self.token),
                                check=True, stdout=subprocess.PIPE, text=True,
                                timeout=arguments.timeout + 30).stdout
        results["room"] = json.loads(output.strip().splitlines()[-1])

    def drain(self, name, process, clients, say_load, results):
        arguments = self.arguments
        log("%s: drain, %d messages queued while Prosody is down" % (name, arguments.backlog))
        self.stop_clients(clients)
        self.stop_prosody()
        queued = say_load(arguments.backlog, ["--concurrency", str(arguments.say_concurrency)], "backlog")
        # Frozen while Prosody comes back and the clients log in, so that every message
        # finds its user online; then thawed, it reconnects (within reconnect_max) and drains.
        os.kill(process.pid, signal.SIGSTOP)
        try:
            self.start_prosody()
            clients = self.clients([])
        finally:
            os.kill(process.pid, signal.SIGCONT)
        thawed = time.monotonic()
        before = cpu_ticks(process.pid)
        for number, client in enumerate(clients):
            client.send(cmd="wait", total=share(queued["accepted"], len(clients), number),
                        timeout=arguments.timeout)
        waits = [client.expect("wait", arguments.timeout + 30) for client in clients]
        after = cpu_ticks(process.pid)
        received = sum(wait["received"] for wait in waits)
        firsts = [wait["first"] for wait in waits if wait["first"] is not None]
        lasts = [wait["last"] for wait in waits if wait["last"] is not None]
        span = (max(lasts) - min(firsts)) if firsts else None
        results["drain"] = dict(
            queued=queued["accepted"], received=received,
            rate=received / span if span else 0.0,
            reconnect_s=(min(firsts) - thawed) if firsts else None,
            cpu_us=(after - before) / TICKS * 1e6 / received if received else None)
        return clients

    def contender(self, name, start, results):
        # Fills `results` as it goes, so that a phase that fails keeps what came before.
        domain = name + ".localhost"
        log("%s: starting" % name)
        process = start()
        try:
            time.sleep(1)
            results["idle_rss_kib"] = status_kib(process.pid, "VmRSS")
            clients = self.clients([domain])
            try:
                with Watch(self, results, "echo"):
                    self.echo(name, domain, process, clients, results)
                # The external Python echo is measured on the echo path only, beside the
                # in-process one: the other phases are the in-process echo bridge's features.
                if name not in ("null", "ext") and self.arguments.room_load:
                    # Before the say and drain phases: its users are not the clients'.
                    with Watch(self, results, "room"):
                        self.room(name, domain, process, results)
                if name not in ("null", "ext"):
                    with Watch(self, results, "say"):
                        say_load = self.say(name, domain, process, clients, results)
                    with Watch(self, results, "drain"):
                        clients = self.drain(name, process, clients, say_load, results)
                results["peak_rss_kib"] = status_kib(process.pid, "VmHWM")
            finally:
                self.stop_clients(clients)
        finally:
            self.processes.stop(process)

    def run(self):
        contenders = [name for name in self.arguments.only.split(",") if name]
        postgres_url = self.start_postgres() if "pg" in contenders else None
        self.write_prosody_config()
        self.start_prosody()
        starts = {
            "null": self.start_null,
            "sqlite": lambda: self.start_jabbridge(
                "sqlite", "sqlite://%s/jabbridge.db" % self.directory),
            "pg": lambda: self.start_jabbridge("pg", postgres_url),
            "ext": lambda: self.start_jabbridge(
                "ext", "sqlite://%s/ext.db" % self.directory, external=True),
        }
        results = {}
        for name in contenders:
            results[name] = {}
            try:
                self.contender(name, starts[name], results[name])
            except Exception as error:  # noqa: BLE001 - report and go on with the others
                log("%s failed: %s" % (name, error))
                results[name]["error"] = str(error)
        return results


# --- the table ------------------------------------------------------------------------------

def fmt(value, digits=0):
    if value is None:
        return "-"
    if digits == 0:
        return "{:,.0f}".format(value)
    return "{:,.{}f}".format(value, digits)


def table(results, arguments):
    names = [("null", "null component"), ("sqlite", "Jabbridge SQLite"),
             ("pg", "Jabbridge PostgreSQL"), ("ext", "external Python echo")]
    names = [(key, label) for key, label in names if key in results]
    null_rate = results.get("null", {}).get("echo", {}).get("rate")

    def get(key, *path):
        value = results.get(key, {})
        for step in path:
            if not isinstance(value, dict):
                return None
            value = value.get(step)
        return value

    def ratio(key):
        rate = get(key, "echo", "rate")
        return rate / null_rate if rate is not None and null_rate else None

    def kib(key, field):
        value = get(key, field)
        return None if value is None else value / 1024

    def verdict(value, bound, at_least):
        if value is None:
            return ""
        return " ok" if (value >= bound if at_least else value <= bound) else " MISS"

    def spread(key):
        rates = get(key, "echo", "rates")
        if not rates:
            return "-"
        return "%s (%s-%s)" % (fmt(sorted(rates)[len(rates) // 2]), fmt(min(rates)), fmt(max(rates)))

    rows = []
    echo_label = "echo round trips/s, median (range)"
    rows.append((echo_label, {k: spread(k) for k, _ in names}, ""))
    rows.append(("  ratio to the null component",
                 {k: fmt(ratio(k), 2) + (verdict(ratio(k), 0.8 if k == "sqlite" else 0.6, True)
                                         if k != "null" else "") for k, _ in names},
                 ">= 0.8 SQLite, >= 0.6 PostgreSQL"))
    rows.append(("CPU us per round trip (user+sys)",
                 {k: fmt(get(k, "echo", "cpu_us"), 1) + (verdict(get(k, "echo", "cpu_us"), 60, False)
                                                         if k != "null" else "") for k, _ in names},
                 "<= 60 (Jabbridge)"))
    if "ext" in results:
        in_process = get("sqlite", "echo", "cpu_us")
        external = get("ext", "echo", "cpu_us")
        factor = external / in_process if external is not None and in_process else None
        rows.append(("  core CPU / in-process echo's (SQLite)",
                     {k: (fmt(factor, 2) + verdict(factor, 2.0, False)) if k == "ext" else "-" for k, _ in names},
                     "<= 2.0 (external)"))
        rows.append(("  + the bridge process's CPU us per trip",
                     {k: fmt(get(k, "echo", "children_cpu_us"), 1) if k == "ext" else "-" for k, _ in names},
                     ""))
    rows.append(("  Prosody's CPU us per round trip",
                 {k: fmt(get(k, "echo", "prosody_cpu_us"), 1) for k, _ in names}, ""))
    if "pg" in results:
        rows.append(("  + PostgreSQL server's CPU us per trip",
                     {k: fmt(get(k, "echo", "database_cpu_us"), 1) if k == "pg" else "-" for k, _ in names},
                     ""))
    rows.append(("round trip p50 at %d/s (ms)" % arguments.rate,
                 {k: fmt(get(k, "latency", "p50_ms"), 2) for k, _ in names}, ""))
    rows.append(("round trip p99 at %d/s (ms)" % arguments.rate,
                 {k: fmt(get(k, "latency", "p99_ms"), 2) for k, _ in names}, ""))
    rows.append(("idle RSS (MiB)",
                 {k: fmt(kib(k, "idle_rss_kib"), 1) + (verdict(kib(k, "idle_rss_kib"), 15, False)
                                                       if k != "null" else "") for k, _ in names},
                 "<= 15"))
    rows.append(("peak RSS (MiB)", {k: fmt(kib(k, "peak_rss_kib"), 1) for k, _ in names}, ""))
    jabbridge = [k for k, _ in names if k != "null"]

    def only(values, default="-"):
        return {k: values.get(k, default) for k, _ in names}

    rows.append(("say accepted/s (%d connections)" % arguments.say_concurrency,
                 only({k: fmt(get(k, "say", "accepted_per_s")) + (verdict(get(k, "say", "accepted_per_s"), 5000, True) if k == "sqlite" else "") for k in jabbridge}),
                 ">= 5,000 SQLite"))
    rows.append(("  CPU us per say, accepted and delivered",
                 only({k: fmt(get(k, "say", "cpu_us_total"), 0) for k in jabbridge}), ""))
    rows.append(("say p99 at %d/s (ms)" % arguments.say_rate,
                 only({k: fmt(get(k, "say_paced", "p99_ms"), 2) + (verdict(get(k, "say_paced", "p99_ms"), 10, False) if k == "sqlite" else "") for k in jabbridge}),
                 "<= 10 SQLite"))
    rows.append(("  say accepted at %d/s (of %d)" % (arguments.say_rate, int(arguments.say_rate * arguments.rate_seconds)),
                 only({k: fmt(get(k, "say_paced", "accepted")) for k in jabbridge}), ""))
    rows.append(("drain of %s queued (msg/s)" % fmt(arguments.backlog),
                 only({k: fmt(get(k, "drain", "rate")) + verdict(get(k, "drain", "rate"), 5000, True) for k in jabbridge}),
                 ">= 5,000"))
    rows.append(("  CPU us per drained message",
                 only({k: fmt(get(k, "drain", "cpu_us"), 1) for k in jabbridge}), ""))
    if arguments.room_load:
        rows.append(("room fan-out to %d users (stanzas/s)" % arguments.room_users,
                     only({k: fmt(get(k, "room", "stanzas_per_s")) for k in jabbridge}), ""))
        rows.append(("  CPU us per fanned-out stanza",
                     only({k: fmt(get(k, "room", "cpu_us_per_stanza"), 1) + verdict(get(k, "room", "cpu_us_per_stanza"), 10, False) for k in jabbridge}),
                     "<= 10"))
        rows.append(("  Prosody's CPU us per stanza",
                     only({k: fmt(get(k, "room", "server_cpu_us_per_stanza"), 1) for k in jabbridge}), ""))
        rows.append(("  %d users joined in (s)" % arguments.room_users,
                     only({k: fmt(get(k, "room", "join_seconds"), 2) for k in jabbridge}), ""))

    headers = ["", *[label for _, label in names], "target"]
    widths = [max(len(headers[0]), *(len(row[0]) for row in rows))]
    for key, label in names:
        widths.append(max(len(label), *(len(row[1][key]) for row in rows)))
    widths.append(max(len("target"), *(len(row[2]) for row in rows)))
    lines = ["  ".join(header.ljust(width) if index in (0, len(headers) - 1) else header.rjust(width)
                       for index, (header, width) in enumerate(zip(headers, widths))).rstrip()]
    lines.append("  ".join("-" * width for width in widths[:-1]) + "  ------")
    for label, values, target in rows:
        cells = [label.ljust(widths[0])]
        cells += [values[key].rjust(width) for (key, _), width in zip(names, widths[1:-1])]
        cells.append(target)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def notes(results, arguments):
    out = []
    for key, result in results.items():
        if "error" in result:
            out.append("%s: FAILED: %s" % (key, result["error"]))
            continue
        echo = result.get("echo", {})
        if echo and echo.get("received") != echo.get("sent"):
            out.append("%s: only %d of %d echo replies came back within %d s"
                       % (key, echo.get("received", 0), echo.get("sent", 0), arguments.timeout))
        if key == "null" and echo.get("wall_s") and echo.get("prosody_cpu_us"):
            mean = echo["received"] / echo["wall_s"]
            out.append("null: Prosody used %.0f%% of one core and the client(s) %.0f%% (one thread each): "
                       "the ceiling is theirs, not the component's"
                       % (echo["prosody_cpu_us"] * mean / 1e4, echo["clients_cpu_us"] * mean / 1e4))
        for phase, latency in result.get("fsync_ms", {}).items():
            if latency > 1:
                out.append("%s: an fdatasync took %.1f ms after the %s runs (0.1-0.2 on an idle disk "
                           "here): the disk was busy; database figures are low" % (key, latency, phase))
        for phase, foreign in result.get("foreign_cpu_share", {}).items():
            if foreign > 0.05:
                out.append("%s: other processes used %.0f%% of the machine during the %s runs: "
                           "these figures are low" % (key, 100 * foreign, phase))
        latency = result.get("latency", {})
        if latency.get("replies_per_s") and latency["replies_per_s"] < 0.95 * arguments.rate:
            out.append("%s: replies came at %.0f/s, below the offered %d/s: latency is queueing"
                       % (key, latency["replies_per_s"], arguments.rate))
        if latency and latency.get("lost"):
            out.append("%s: %d of the paced messages got no reply" % (key, latency["lost"]))
        for phase in ("say", "say_paced"):
            say = result.get(phase)
            if say and (say.get("refused") or say.get("failed")):
                out.append("%s: %s: %d refused, %d failed (%s)" % (key, phase, say["refused"], say["failed"], say.get("first_refusal")))
        say = result.get("say")
        if say and say.get("load_cpu_us_per_request") is not None:
            out.append("%s: say_load itself used %.0f us CPU per request in the burst"
                       % (key, say["load_cpu_us_per_request"]))
        room = result.get("room")
        if room and room.get("received") != room.get("expected"):
            out.append("%s: room: %d of %d copies arrived (%d lines accepted)"
                       % (key, room["received"], room["expected"], room["accepted"]))
        drain = result.get("drain")
        if drain:
            if drain["received"] != drain["queued"]:
                out.append("%s: drain: %d of %d arrived" % (key, drain["received"], drain["queued"]))
            if drain.get("reconnect_s") is not None:
                out.append("%s: drain: first message %.2f s after Jabbridge was thawed (reconnection)"
                           % (key, drain["reconnect_s"]))
    return "\n".join(out)


def machine(fsync_before):
    """The machine, the load before the run, and the disk's fdatasync time."""
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        memory = int(meminfo.readline().split()[1]) / 1024 / 1024
    return "%d cores (%s), %.0f GiB RAM, load average before the run %.2f, fdatasync %.2f ms" % (
        os.cpu_count(), model, memory, LOAD_BEFORE, fsync_before)


LOAD_BEFORE = os.getloadavg()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jabbridge", required=True)
    parser.add_argument("--null-component", required=True)
    parser.add_argument("--say-load", required=True)
    parser.add_argument("--room-load", help="examples/room_load: adds the room fan-out section")
    parser.add_argument("--room-users", type=int, default=200, help="users joined to the fan-out room")
    parser.add_argument("--room-messages", type=int, default=100, help="lines said in the fan-out room")
    parser.add_argument("--messages", type=int, default=20000, help="echo messages per contender, all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (the median is shown)")
    parser.add_argument("--clients", type=int, default=1, help="client connections (one user each)")
    parser.add_argument("--contacts", type=int, default=32, help="contacts each client writes to in turn")
    parser.add_argument("--rate", type=int, default=500, help="messages/s of the latency run")
    parser.add_argument("--rate-seconds", type=float, default=4, help="length of each paced run")
    parser.add_argument("--say", type=int, default=10000, help="say requests of the burst")
    parser.add_argument("--say-concurrency", type=int, default=32)
    parser.add_argument("--say-rate", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=10000, help="messages queued while Prosody is down")
    parser.add_argument("--timeout", type=int, default=90, help="seconds any one load may take")
    parser.add_argument("--only", default="null,sqlite,pg,ext",
                        help="contenders to run: null, sqlite, pg, ext (the external Python echo on SQLite)")
    parser.add_argument("--prosody-nagle", action="store_true", help="leave Nagle on in Prosody")
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    arguments = parser.parse_args()
    bench = Bench(arguments)
    fsync_before = fsync_ms(bench.directory)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    try:
        results = bench.run()
    finally:
        bench.cleanup()
    if arguments.json:
        with open(arguments.json, "w") as out:
            json.dump(results, out, indent=2)
    print()
    print(machine(fsync_before))
    print("%d slixmpp client(s), each writing to %d contacts; Prosody %s; %d echo messages per "
          "contender in %d rounds" % (arguments.clients, arguments.contacts,
                                      "with Nagle on" if arguments.prosody_nagle else "with Nagle off",
                                      arguments.messages, arguments.rounds))
    print(table(results, arguments))
    extra = notes(results, arguments)
    if extra:
        print()
        print(extra)


if __name__ == "__main__":
    main()
