#!/usr/bin/env python3
"""Echo bridge for Jabbridge, protocol v1: every contact repeats what you write (and types
while you type), and in any room named #something a bot called "echo" repeats every post. Stdlib only. One JSON-RPC 2.0
message per line on stdin/stdout; logs go to stderr. See docs/bridge-protocol.md."""
import itertools, json, sys, time

PREFIX = ""                      # settings.prefix, from initialize
ROOMS = {}                       # room -> {nick: user}
AWAY = {}                        # (room, user) -> their away text, while away
PREFIXES = {}                    # user -> the reply prefix set with the `prefix` command
BOT = {"nick": "echo", "role": "moderator", "affiliation": "owner"}
STARTED = int(time.time())       # the rooms' history (room/history) ends here
ids = itertools.count(1)

def send(msg):
    sys.stdout.write(json.dumps(msg, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()

def request(method, params):     # to the core; it answers once it has committed the event
    send({"jsonrpc": "2.0", "id": next(ids), "method": method, "params": params})

def notify(method, params):      # ephemeral news (typing): no answer
    send({"jsonrpc": "2.0", "method": method, "params": params})

def log(*args):                  # stdout is for the protocol only
    print(*args, file=sys.stderr, flush=True)

class Refused(Exception):        # becomes a typed error: an RFC 6120 condition for the user
    def __init__(self, code, condition, kind, text, fatal=False):
        super().__init__(text)
        data = {"condition": condition, "type": kind, "text": text}
        if fatal:
            data["supported"] = [1]
        self.fatal, self.error = fatal, {"code": code, "message": text, "data": data}

def initialize(p):
    global PREFIX
    if 1 not in p["protocol"]["versions"]:   # say what we speak, then leave
        raise Refused(-32602, "bad-request", "cancel", "this bridge speaks protocol 1", fatal=True)
    PREFIX = p.get("config", {}).get("prefix", "")
    return {"protocol": {"version": 1, "revision": "1.0"},
            "bridge": {"name": "Python echo", "version": "1.0", "gateway_type": "echo",
                       "prompt": {"description": "Enter any name: that contact will echo "
                                  "what you write", "prompt": "Name"}},
            "capabilities": {"rooms": True, "corrections": True, "replies": True,
                             "chat_states": True},
            "addressing": {"room_pattern": "#.+"},
            "commands": [{"node": "prefix", "name": "Set the reply prefix", "current": True,
                          "form": {"title": "Reply prefix", "fields": [
                              {"var": "prefix", "label": "Reply prefix"}]}}],
            "registration": {"title": "Register with the echo gateway",
                             "instructions": "Choose the prefix of your contacts' replies.",
                             "fields": [{"var": "prefix", "label": "Reply prefix"}]}}

def register(p):
    prefix = p["values"].get("prefix", "")
    if len(prefix) > 32:
        raise Refused(406, "not-acceptable", "modify", "the reply prefix may be at most 32 characters")
    return {"step": {"type": "done", "data": {"prefix": prefix}}}

def command_current(p):          # the form shows the prefix in force
    return {"values": {"prefix": PREFIXES.get(p["user"], PREFIX)}}

def command_run(p):              # the only command: `prefix`
    user, prefix = p["user"], p.get("values", {}).get("prefix", "")
    if not isinstance(user, str) or not isinstance(prefix, str):
        raise TypeError("user and prefix are strings")
    if len(prefix) > 32:
        raise Refused(406, "not-acceptable", "modify", "the reply prefix may be at most 32 characters")
    PREFIXES[user] = prefix
    return {"text": "Your contacts now reply after " + repr(prefix)}

def message_send(p):             # the contact answers with the text, after the prefix
    prefix = PREFIXES.get(p["user"]) or (p.get("registration") or {}).get("prefix") or PREFIX
    reply = {"event_id": "echo-" + p["txn_id"], "user": p["user"], "contact": p["contact"],
             "text": prefix + p["text"], "attachments": p.get("attachments", [])}
    if p.get("room"):
        reply["room"] = p["room"]
    request("message/received", reply)
    return {"status": "sent", "id": reply["event_id"]}

def occupants(room):
    return [BOT] + [{"nick": nick, "id": user} for nick, user in sorted(ROOMS[room].items())]

def room_join(p):
    room = ROOMS.setdefault(p["room"], {})
    for nick, user in room.items():
        if user == p["user"]:
            return {"nick": nick, "occupants": occupants(p["room"]), "subject": {"text": ""}}
    if p["nick"] == BOT["nick"] or p["nick"] in room:
        raise Refused(409, "conflict", "cancel", p["nick"] + " is taken in " + p["room"])
    room[p["nick"]] = p["user"]
    event(p["room"], {"type": "occupant", "occupant": {"nick": p["nick"], "id": p["user"]}})
    return {"nick": p["nick"], "occupants": occupants(p["room"]), "subject": {"text": ""}}

def room_leave(p):
    AWAY.pop((p["room"], p["user"]), None)
    room = ROOMS.get(p["room"], {})
    for nick, user in list(room.items()):
        if user == p["user"]:
            del room[nick]
            event(p["room"], {"type": "left", "nick": nick})
    return {}

def room_send(p):                # the post shows as said by the user, then the bot repeats it
    nick = next((n for n, u in ROOMS.get(p["room"], {}).items() if u == p["user"]), None)
    if nick is None:
        raise Refused(406, "not-acceptable", "cancel", "you are not in this room")
    said = {"type": "message", "event_id": "room-" + p["txn_id"], "nick": nick, "sender": p["user"],
            "text": p["text"], "echo_of": p["txn_id"]}
    repeat = {"type": "message", "event_id": "room-" + p["txn_id"] + "-echo", "nick": "echo",
              "text": p["text"]}
    if p.get("replaces"):
        said["replaces"], repeat["replaces"] = p["replaces"], p["replaces"] + "-echo"
    if p.get("reply_to"):          # the repeat replies to the same message
        said["reply_to"] = repeat["reply_to"] = p["reply_to"]["event_id"]
    event(p["room"], said)
    event(p["room"], repeat)
    return {"status": "echo_follows"}

def room_invite(p):              # whoever is invited comes at once
    if p["contact"] in ROOMS.get(p["room"], {}) or p["contact"] == BOT["nick"]:
        raise Refused(409, "conflict", "cancel", p["contact"] + " is in " + p["room"] + " already")
    ROOMS.setdefault(p["room"], {})[p["contact"]] = p["contact"]
    event(p["room"], {"type": "occupant", "occupant": {"nick": p["contact"], "id": p["contact"]}})
    return {}

def contact_version(p):          # a contact, the bot or someone in the room says what runs it
    if p.get("room") and p["contact"] != BOT["nick"] and p["contact"] not in ROOMS.get(p["room"], {}):
        raise Refused(404, "item-not-found", "cancel", "nobody in " + p["room"] + " is called " + p["contact"])
    return {"software": "Python echo " + ("bot" if p["contact"] == BOT["nick"] else "contact") + " 1.0"}

def contact_ping(p):             # whoever contact_version knows answers
    contact_version(p)
    return {}

def room_presence(p):           # the user's away shows on the pretend network, when it changes
    key = (p["room"], p["user"])
    if AWAY.get(key) == p.get("away"):
        return
    AWAY[key] = p.get("away")
    for nick, user in ROOMS.get(p["room"], {}).items():
        if user == p["user"]:
            occupant = {"nick": nick, "id": user}
            if "away" in p:
                occupant["away"] = p["away"]
            event(p["room"], {"type": "occupant", "occupant": occupant})

def room_history(p):             # the bot said five lines a minute apart before we started
    lines = [{"type": "message", "event_id": p["room"] + "-past-" + str(i), "nick": "echo",
              "text": "long ago " + str(i), "ts": stamp(STARTED - 60 * (5 - i))} for i in range(5)]
    if p.get("before"):          # RFC 3339 stamps of one form compare as text
        lines = [line for line in lines if line["ts"] < p["before"]["ts"]]
    return {"messages": lines[max(0, len(lines) - p["limit"]):]}

def stamp(at):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + ".000Z"

def event(room, what):
    request("room/event", {"room": room, "event": what})

HANDLERS = {"initialize": initialize, "register/submit": register, "message/send": message_send,
            "room/join": room_join, "room/leave": room_leave, "room/send": room_send,
            "room/history": room_history, "room/invite": room_invite,
            "contact/version": contact_version, "contact/ping": contact_ping,
            "command/current": command_current, "command/run": command_run,
            "session/start": lambda p: {}, "session/stop": lambda p: {},
            "ping": lambda p: {}, "shutdown": lambda p: None}
NOTIFICATIONS = {"room/presence": room_presence,
                 "chat/typing": lambda p: None if p.get("room") else notify("chat/typing", p),
                 "room/typing": lambda p: notify("room/event", {"room": p["room"], "event": {
                     "type": "typing", "nick": BOT["nick"], "state": p["state"]}})}

def main():
    for line in sys.stdin:       # EOF on stdin: the core is gone
        try:
            msg = json.loads(line)
        except ValueError:
            if line.strip():
                log("not JSON, ignored:", line[:80])
            continue
        if not isinstance(msg, dict) or "method" not in msg:
            if isinstance(msg, dict) and "error" in msg:   # the core refused one of our events
                log("the core refused a request:", msg["error"].get("message"))
            continue
        if msg["method"] == "exit":
            return
        if "id" not in msg:      # notifications we do not know are ignored
            if msg["method"] in NOTIFICATIONS:
                try:
                    NOTIFICATIONS[msg["method"]](msg.get("params") or {})
                except (KeyError, TypeError, AttributeError) as error:
                    log("bad notification:", repr(error))
            continue
        handler = HANDLERS.get(msg["method"])
        try:
            if handler is None:
                raise Refused(-32601, "feature-not-implemented", "cancel", "unknown method " + msg["method"])
            send({"jsonrpc": "2.0", "id": msg["id"], "result": handler(msg.get("params") or {})})
        except Refused as refused:
            send({"jsonrpc": "2.0", "id": msg["id"], "error": refused.error})
            if refused.fatal:
                sys.exit(1)
        except (KeyError, TypeError, AttributeError) as error:
            send({"jsonrpc": "2.0", "id": msg["id"],
                  "error": {"code": -32602, "message": "invalid params: " + repr(error)}})

if __name__ == "__main__":
    main()
