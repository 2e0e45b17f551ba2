#!/usr/bin/env python3
"""End-to-end check of the throw-away InspIRCd 3 + atheme 7.2 pair.

Fills inspircd.conf.in / atheme.conf.in into a temp dir on free loopback
ports, starts both daemons (as user `irc` when run as root), then:
  A: CAP LS 302 + registration + NickServ REGISTER
  B: SASL PLAIN with the right password  -> expect 900 + 903, then 001
  C: SASL PLAIN with a wrong password    -> expect 904
Prints every line received, plus timings. Kills both daemons at the end.

Usage: python3 verify.py [--keep]   (--keep leaves the temp dir for inspection)
Stdlib only.
"""
import base64
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
INSPIRCD = "/usr/sbin/inspircd"
ATHEME = "/usr/bin/atheme-services"
T0 = time.monotonic()


def ts():
    return "%7.3f" % (time.monotonic() - T0)


def log(msg):
    print("[%s] %s" % (ts(), msg), flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fill(template, dest, subs):
    with open(template) as f:
        text = f.read()
    for k, v in subs.items():
        text = text.replace("@%s@" % k, str(v))
    left = re.findall(r"@[A-Z]+@", text)
    assert not left, "unfilled placeholders: %s" % left
    with open(dest, "w") as f:
        f.write(text)


def make_certificate(work):
    """The TLS port's self-signed certificate and key, in the work dir."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=irc.test",
                    "-keyout", os.path.join(work, "tls-key.pem"), "-out", os.path.join(work, "tls-cert.pem")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def as_irc(cmd):
    """Prefix cmd with setpriv to drop to user irc when we are root."""
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=irc", "--regid=irc", "--init-groups"] + cmd
    return cmd


class Client:
    def __init__(self, name, port):
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, line):
        print("[%s] %s >> %s" % (ts(), self.name, line), flush=True)
        self.sock.sendall(line.encode() + b"\r\n")

    def readline(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("%s: timed out waiting for a line" % self.name)
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("%s: connection closed" % self.name)
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.rstrip(b"\r").decode("utf-8", "replace")
        print("[%s] %s << %s" % (ts(), self.name, line), flush=True)
        parts = line.split(" ")
        if parts[0] == "PING":
            self.send("PONG " + " ".join(parts[1:]))
        return line

    def expect(self, pred, timeout=10.0, what="line"):
        """Read lines until pred(line, params) is true; return (line, all lines)."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                line = self.readline(deadline)
            except TimeoutError:
                raise TimeoutError("%s: no %s within %.1fs" % (self.name, what, timeout))
            seen.append(line)
            if pred(line, cmd_of(line)):
                return line, seen

    def close(self):
        try:
            self.send("QUIT :bye")
        except OSError:
            pass
        self.sock.close()


def cmd_of(line):
    """Return (command, params-list) of an IRC line, tags and prefix stripped."""
    rest = line
    if rest.startswith("@"):
        rest = rest.split(" ", 1)[1]
    if rest.startswith(":"):
        rest = rest.split(" ", 1)[1]
    trailing = None
    if " :" in rest:
        rest, trailing = rest.split(" :", 1)
    parts = rest.split()
    if trailing is not None:
        parts.append(trailing)
    return parts[0] if parts else "", parts[1:]


def is_cmd(*names):
    return lambda line, c: c[0] in names


def main():
    keep = "--keep" in sys.argv
    work = tempfile.mkdtemp(prefix="irctest.")
    os.chmod(work, 0o755)
    port, linkport = free_port(), free_port()
    while linkport == port:
        linkport = free_port()
    subs = {"PORT": port, "LINKPORT": linkport, "TLSPORT": free_port(), "DIR": work,
            "PASSWORD": secrets.token_hex(12)}
    make_certificate(work)
    fill(os.path.join(HERE, "inspircd.conf.in"), os.path.join(work, "inspircd.conf"), subs)
    fill(os.path.join(HERE, "atheme.conf.in"), os.path.join(work, "atheme.conf"), subs)
    if os.geteuid() == 0:
        irc = pwd.getpwnam("irc")
        for p in [work] + [os.path.join(work, f) for f in os.listdir(work)]:
            os.chown(p, irc.pw_uid, irc.pw_gid)
    log("workdir %s  client port %d  link port %d" % (work, port, linkport))

    procs = []
    ok = False
    try:
        # ---- InspIRCd ----
        t = time.monotonic()
        ircd = subprocess.Popen(
            as_irc([INSPIRCD, "--config", os.path.join(work, "inspircd.conf"), "--nofork", "--nopid"]),
            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(ircd)
        for line in ircd.stdout:
            if "is now running as" in line:
                log("inspircd ready after %.3fs: %s" % (time.monotonic() - t, line.strip()))
                break
        else:
            raise RuntimeError("inspircd exited with %s" % ircd.wait())
        # drain further stdout so the pipe never blocks the daemon
        threading.Thread(target=lambda: [None for _ in ircd.stdout], daemon=True).start()
        time.sleep(0.025)

        # ---- atheme ----
        t = time.monotonic()
        alog = os.path.join(work, "atheme.log")
        atheme = subprocess.Popen(
            as_irc([ATHEME, "-n", "-c", os.path.join(work, "atheme.conf"), "-D", work,
                    "-l", alog, "-p", os.path.join(work, "atheme.pid")]),
            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(atheme)
        deadline = time.monotonic() + 30
        while True:
            if atheme.poll() is not None:
                raise RuntimeError("atheme exited with %s" % atheme.returncode)
            if os.path.exists(alog) and "finished synching with uplink" in open(alog).read():
                break
            if time.monotonic() > deadline:
                raise RuntimeError("atheme did not sync in 30s")
            time.sleep(0.01)
        log("atheme synced after %.3fs" % (time.monotonic() - t))

        # ---- client A: CAP LS, register, NickServ REGISTER ----
        account, password = "alice", "secretpw"
        t = time.monotonic()
        a = Client("A", port)
        a.send("CAP LS 302")
        a.send("NICK " + account)
        a.send("USER alice 0 * :Alice")
        caps = []
        while True:
            line, _ = a.expect(lambda l, c: c[0] == "CAP" and c[1][1] == "LS", what="CAP LS")
            _, params = cmd_of(line)
            more = params[2] == "*"
            caps += params[-1].split()
            if not more:
                break
        log("CAP LS: " + " ".join(caps))
        if not any(c == "sasl" or c.startswith("sasl=") for c in caps):
            raise RuntimeError("sasl not advertised (atheme not linked?)")
        a.send("CAP END")
        _, seen = a.expect(is_cmd("376", "422"), what="end of MOTD")
        log("A registered after %.3fs" % (time.monotonic() - t))
        print("---- 005 lines ----")
        for l in seen:
            if cmd_of(l)[0] == "005":
                print(l)
        t = time.monotonic()
        a.send("PRIVMSG NickServ :REGISTER %s a@example.org" % password)
        line, _ = a.expect(lambda l, c: c[0] == "NOTICE" and l.startswith(":NickServ!")
                           and "registered" in l, what="NickServ REGISTER reply")
        reg_line = line
        log("REGISTER confirmed after %.3fs" % (time.monotonic() - t))

        # ---- client B: SASL PLAIN, right password ----
        def sasl(name, nick, pw):
            t = time.monotonic()
            c = Client(name, port)
            c.send("CAP REQ :sasl")
            c.send("NICK " + nick)
            c.send("USER %s 0 * :%s" % (nick, nick))
            c.expect(lambda l, p: p[0] == "CAP" and p[1][1] in ("ACK", "NAK"), what="CAP ACK")
            c.send("AUTHENTICATE PLAIN")
            c.expect(lambda l, p: p[0] == "AUTHENTICATE", what="AUTHENTICATE +")
            blob = base64.b64encode(("%s\0%s\0%s" % (account, account, pw)).encode()).decode()
            c.send("AUTHENTICATE " + blob)
            line, seen = c.expect(is_cmd("903", "904", "905", "906", "907"), what="SASL result")
            log("%s SASL result after %.3fs" % (name, time.monotonic() - t))
            return c, line, seen

        b, b903, bseen = sasl("B", "bob", password)
        if cmd_of(b903)[0] != "903" or not any(cmd_of(l)[0] == "900" for l in bseen):
            raise RuntimeError("B: expected 900 + 903")
        t = time.monotonic()
        b.send("CAP END")
        b.expect(is_cmd("001"), what="001")
        log("B got 001 %.3fs after CAP END" % (time.monotonic() - t))

        # ---- client C: SASL PLAIN, wrong password ----
        c, c904, cseen = sasl("C", "carol", "wrongpw")
        if cmd_of(c904)[0] != "904":
            raise RuntimeError("C: expected 904")

        print("---- recorded lines ----")
        print("NickServ REGISTER:", reg_line)
        for l in bseen:
            if cmd_of(l)[0] in ("900", "903"):
                print("SASL ok:", l)
        for l in cseen:
            if cmd_of(l)[0] in ("904",):
                print("SASL fail:", l)
        for cl in (a, b, c):
            cl.close()
        ok = True
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log("daemons stopped (exit codes %s)" % [p.returncode for p in procs])
        if keep or not ok:
            log("kept workdir " + work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    log("RESULT: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
