#!/usr/bin/python3
"""A hand test, scripted: a real Profanity (in tmux) uses Jabbridge's IRC bridge against a
throw-away InspIRCd 3 with atheme (SASL), through a throw-away Prosody. Not part of CI
(it drives a terminal UI by its screen, which is slow and timing-bound); run it by hand:

    sudo python3 tests/manual/profanity_irc.py target/release/jabbridge [--keep]

It needs profanity, tmux, prosody, inspircd and atheme-services (apt). Everything listens
on 127.0.0.1, on free ports, in a temp dir, and is stopped at the end. Steps, each checked
on Profanity's screen or on a raw IRC client's side:
  1. log in to Prosody as demo@localhost;
  2. the irc-settings ad-hoc command on the server's address: nick, SASL PLAIN, account and
     password, filled in Profanity's form window;
  3. join #test%irc.test@irc.localhost; the IRC user bob sees the user logged in (WHOIS 330);
  4. messages both ways, /me from IRC, a private message both ways;
  5. the irc-connection-info command (it asks nothing on the server's address);
  6. a topic change without ops: the refusal is said in the room;
  7. a nick change."""

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "irc-servers"))
from verify import ATHEME, INSPIRCD, Client, as_irc, fill, free_port, is_cmd, make_certificate  # noqa: E402

SERVERS = os.path.join(HERE, "..", "irc-servers")


def step(text):
    print("==> " + text, flush=True)


class Run:
    def __init__(self, jabbridge, keep):
        self.jabbridge = os.path.abspath(jabbridge)
        self.keep = keep
        self.work = tempfile.mkdtemp(prefix="jabbridge-profanity.")
        os.chmod(self.work, 0o755)
        self.processes = []
        self.irc = free_port()

    def start(self, argv, **kwargs):
        process = subprocess.Popen(argv, **kwargs)
        self.processes.append(process)
        return process

    def irc_servers(self):
        link = free_port()
        subs = {"PORT": self.irc, "LINKPORT": link, "TLSPORT": free_port(), "DIR": self.work,
                "PASSWORD": secrets.token_hex(12)}
        make_certificate(self.work)
        for name in ("inspircd", "atheme"):
            fill(os.path.join(SERVERS, name + ".conf.in"), os.path.join(self.work, name + ".conf"), subs)
        if os.geteuid() == 0:
            irc = pwd.getpwnam("irc")
            for path in [self.work] + [os.path.join(self.work, f) for f in os.listdir(self.work)]:
                os.chown(path, irc.pw_uid, irc.pw_gid)
        ircd = self.start(as_irc([INSPIRCD, "--config", os.path.join(self.work, "inspircd.conf"), "--nofork",
                                  "--nopid"]), cwd=self.work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in ircd.stdout:
            if "is now running as" in line:
                break
        threading.Thread(target=lambda: [None for _ in ircd.stdout], daemon=True).start()
        time.sleep(0.05)
        log = os.path.join(self.work, "atheme.log")
        self.start(as_irc([ATHEME, "-n", "-c", os.path.join(self.work, "atheme.conf"), "-D", self.work, "-l", log,
                           "-p", os.path.join(self.work, "atheme.pid")]), cwd=self.work,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (os.path.exists(log) and "finished synching with uplink" in open(log).read()):
            assert time.monotonic() < deadline, "atheme did not link"
            time.sleep(0.05)
        # The NickServ account: atheme names it after the nick that registers it.
        client = Client("reg", self.irc)
        client.send("NICK carolreg")
        client.send("USER c 0 * :c")
        client.expect(is_cmd("001"), timeout=10)
        client.send("PRIVMSG NickServ :REGISTER carolpw carol@example.org")
        client.expect(lambda line, c: c[0] == "900", timeout=10, what="the account")
        client.close()

    def prosody_and_jabbridge(self):
        self.c2s, component = free_port(), free_port()
        directory = os.path.join(self.work, "prosody")
        os.makedirs(os.path.join(directory, "data", "localhost", "accounts"))
        secret = secrets.token_hex(8)
        with open(os.path.join(directory, "prosody.cfg.lua"), "w") as config:
            config.write('''pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{d}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ {component} }}
component_interfaces = {{ "127.0.0.1" }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "carbons"; }}
modules_disabled = {{ "s2s"; "s2s_auth_certs"; }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
VirtualHost "localhost"
Component "irc.localhost"
    component_secret = "{secret}"
'''.format(d=directory, c2s=self.c2s, component=component, secret=secret))
        with open(os.path.join(directory, "data", "localhost", "accounts", "demo.dat"), "w") as account:
            account.write('return {\n\t["password"] = "demopw";\n};\n')
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "prosody:prosody", directory], check=True)
            prefix = ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups"]
        else:
            prefix = []
        self.start(prefix + ["prosody", "--config", os.path.join(directory, "prosody.cfg.lua"), "-F"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gateway = os.path.join(self.work, "jabbridge")
        os.makedirs(gateway)
        with open(os.path.join(gateway, "jabbridge.toml"), "w") as config:
            config.write('''[xmpp]
server = "127.0.0.1:{component}"
[database]
url = "sqlite://{gateway}/jabbridge.db"
[http]
listen = "127.0.0.1:{http}"
[[bridge]]
kind = "irc"
domain = "irc.localhost"
secret = "{secret}"
allow = ["localhost"]
secret_key = "{key}"
[[bridge.network]]
name = "irc.test"
host = "127.0.0.1"
port = {irc}
tls = "off"
'''.format(component=component, gateway=gateway, http=free_port(), secret=secret, key=secrets.token_hex(32),
           irc=self.irc))
        time.sleep(1)  # Prosody listening
        self.start([self.jabbridge, "run", "--config", os.path.join(gateway, "jabbridge.toml")],
                   stdout=open(os.path.join(gateway, "log"), "w"), stderr=subprocess.STDOUT)

    # Profanity, through tmux
    def tmux(self, *argv):
        return subprocess.run(["tmux", "-L", "jabbridge-profanity"] + list(argv), check=True,
                              capture_output=True, text=True).stdout

    def type(self, text):
        self.tmux("send-keys", "-t", "p", "-l", text)
        self.tmux("send-keys", "-t", "p", "Enter")

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "p", "-S", "-200")

    def until_shown(self, text, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.screen():
                return
            time.sleep(0.2)
        raise AssertionError("Profanity never showed %r; its screen:\n%s" % (text, self.screen()))

    def profanity(self):
        home = os.path.join(self.work, "home")
        os.makedirs(home)
        self.tmux("new-session", "-d", "-s", "p", "-x", "200", "-y", "50",
                  "env HOME=%s TERM=xterm-256color profanity" % home)
        self.until_shown("Type '/help'")

    def run(self):
        step("InspIRCd and atheme, the NickServ account carolreg")
        self.irc_servers()
        step("Prosody and Jabbridge")
        self.prosody_and_jabbridge()
        step("Profanity logs in as demo@localhost")
        self.profanity()
        self.type("/connect demo@localhost server 127.0.0.1 port %d tls disable" % self.c2s)
        self.until_shown("password")
        self.type("demopw")
        self.until_shown("logged in successfully")
        step("irc-settings on irc.test@irc.localhost: nick, SASL PLAIN, account, password")
        self.type("/cmd list irc.test@irc.localhost")
        self.until_shown("irc-settings")
        self.type("/cmd exec irc-settings irc.test@irc.localhost")
        self.until_shown("[field1] Nick")
        # Fields by their labels: Profanity numbers them in the form's order.
        numbers = {label: number for number, label in
                   re.findall(r"\[field(\d+)\] ([^:\n]+):", self.screen())}
        for label, value in (("Nick", "carol"), ("Log in with SASL", "plain"),
                             ("Account", "carolreg"), ("Account password", "carolpw")):
            assert label in numbers, "no field %r in the form:\n%s" % (label, self.screen())
            field = "/field%s %s" % (numbers[label], value)
            before = self.screen().count("Field updated")
            self.type(field)
            deadline = time.monotonic() + 10
            while self.screen().count("Field updated") == before:
                assert time.monotonic() < deadline, "Profanity did not take %r:\n%s" % (field, self.screen())
                time.sleep(0.2)
        self.type("/form submit")
        self.until_shown("SASL PLAIN as carolreg")
        step("join #test%irc.test@irc.localhost")
        self.type("/join #test%irc.test@irc.localhost nick carol")
        self.until_shown("You have joined the room as carol")
        bob = Client("bob", self.irc)
        bob.send("NICK bob")
        bob.send("USER bob 0 * :Bob")
        bob.expect(is_cmd("001"), timeout=10)
        bob.send("JOIN #test")
        bob.expect(is_cmd("366"), timeout=10)
        bob.send("WHOIS carol")
        line, _ = bob.expect(is_cmd("330", "318"), timeout=10, what="WHOIS")
        assert " 330 " in line and "carolreg" in line, "carol is not logged in to her account: " + line
        step("talking both ways, /me, private messages")
        bob.send("PRIVMSG #test :hello carol, from IRC")
        self.until_shown("bob: hello carol, from IRC")
        self.type("hi bob, from Profanity through Jabbridge")
        line, _ = bob.expect(lambda l, c: c[0] == "PRIVMSG", timeout=15, what="carol's line")
        assert line.endswith("PRIVMSG #test :hi bob, from Profanity through Jabbridge"), line
        self.until_shown("carol: hi bob, from Profanity through Jabbridge")
        bob.send("PRIVMSG #test :\x01ACTION waves\x01")
        self.until_shown("*bob waves")
        bob.send("PRIVMSG carol :a private word")
        self.until_shown("-2-[3]")  # a new window, in the status bar
        self.type("/win 3")
        self.until_shown("bob%irc.test@irc.localhost: a private word")
        self.type("a private answer")
        line, _ = bob.expect(lambda l, c: c[0] == "PRIVMSG", timeout=15, what="the private answer")
        assert line.endswith("PRIVMSG bob :a private answer"), line
        step("irc-connection-info on the server's address: it asks nothing, it answers")
        self.type("/win 1")
        self.type("/cmd exec irc-connection-info irc.test@irc.localhost")
        self.until_shown("logged in as carolreg")
        step("a topic change without ops, then a nick change")
        self.type("/win 2")
        self.type("/subject set from Profanity")
        self.until_shown("You must be a channel op or higher to change the topic.")
        self.type("/nick carol2")
        line, _ = bob.expect(lambda l, c: c[0] == "NICK", timeout=15, what="the nick change")
        assert line.startswith(":carol!") and line.endswith("carol2"), line
        bob.close()
        step("all steps passed")

    def stop(self):
        subprocess.run(["tmux", "-L", "jabbridge-profanity", "kill-server"], capture_output=True)
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.keep:
            print("files kept in " + self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    run = Run(sys.argv[1], "--keep" in sys.argv)
    try:
        run.run()
    except BaseException:
        print(run.screen() if shutil.which("tmux") else "", file=sys.stderr)
        raise
    finally:
        run.stop()


if __name__ == "__main__":
    main()
