#!/usr/bin/env node
// IRC bridge for Jabbridge, protocol v1, in Node.js with no dependencies: every XMPP user gets
// their own IRC connection (opened on their first join or private message), channels are
// rooms (#chan@domain) and nicks are contacts (nick@domain). One server, from settings.server
// ("host:port"). JSON-RPC 2.0, one message per line on stdin/stdout; logs go to stderr.
'use strict';
const net = require('net');
const readline = require('readline');

let server = { host: '127.0.0.1', port: 6667 };
let ids = 1;
let events = 0;
const conns = new Map();            // user JID -> Conn

const send = (msg) => process.stdout.write(JSON.stringify(msg) + '\n');
const request = (method, params) => send({ jsonrpc: '2.0', id: 'n' + ids++, method, params });
const log = (...args) => console.error(...args);   // stdout is the protocol's
const eventId = () => `irc-${process.pid}-${Date.now()}-${events++}`;
const lower = (name) => name.toLowerCase();
// CR, LF and NUL never reach IRC: a line break makes a second line.
const lines = (text) => text.split(/\r\n|\r|\n/).map((l) => l.replace(/\0/g, '')).filter((l) => l.length);

class Refused extends Error {
  constructor(code, condition, type, text) {
    super(text);
    this.error = { code, message: text, data: { condition, type, text } };
  }
}

// The one of our users in a channel who reports what happens there (so the core hears it once).
function reporter(channel) {
  const present = [...conns.values()].filter((c) => c.ready && c.channels.has(lower(channel)));
  present.sort((a, b) => (a.user < b.user ? -1 : 1));
  return present[0];
}
const ours = (channel, nick) =>
  [...conns.values()].some((c) => c.channels.has(lower(channel)) && lower(c.nick) === lower(nick));

class Conn {
  constructor(user, nick) {
    this.user = user;
    this.nick = nick.replace(/[^A-Za-z0-9_\-\[\]\\`^{|}]/g, '_').slice(0, 30) || 'xmpp';
    this.channels = new Set();    // lowercase channel names joined
    this.pending = new Map();     // lowercase channel -> {names, resolve, reject}
    this.ready = false;
    this.opened = new Promise((resolve, reject) => { this.resolve = resolve; this.reject = reject; });
    this.socket = net.connect(server, () => {
      this.write(`NICK ${this.nick}`);
      this.write(`USER ${this.nick} 0 * :${user}`);
    });
    readline.createInterface({ input: this.socket }).on('line', (line) => this.handle(line));
    this.socket.on('error', (e) => log('IRC connection of', user, 'failed:', e.message));
    this.socket.on('close', () => this.closed());
  }

  write(line) { this.socket.write(line + '\r\n'); }

  closed() {
    conns.delete(this.user);
    this.reject(new Refused(503, 'service-unavailable', 'wait', 'cannot reach the IRC server'));
    for (const join of this.pending.values()) join.reject(new Refused(503, 'service-unavailable', 'wait', 'the IRC connection closed'));
    if (this.ready) request('session/state', { user: this.user, state: 'unavailable', text: 'the IRC connection closed' });
  }

  handle(line) {
    const [head, ...rest] = line.split(' :');
    const trailing = rest.join(' :');
    const words = head.split(' ').filter((w) => w);
    const prefix = words[0] && words[0].startsWith(':') ? words.shift().slice(1) : '';
    const from = prefix.split('!')[0];
    const [command, ...params] = words;
    if (rest.length) params.push(trailing);
    const channel = params[0] || '';
    const room = (event) => {
      if (reporter(channel) === this) request('room/event', { room: channel, event });
    };
    switch (command) {
      case 'PING': this.write(`PONG :${params[0] || ''}`); break;
      case '001':
        this.nick = params[0]; this.ready = true; this.resolve();
        request('session/state', { user: this.user, state: 'connected' });
        break;
      case '433': if (!this.ready) { this.nick += '_'; this.write(`NICK ${this.nick}`); } break;
      case '353': { // names of a channel we are joining
        const join = this.pending.get(lower(params[2] || ''));
        if (join) join.names.push(...params[3].split(' ').filter((n) => n));
        break;
      }
      case '366': {
        const join = this.pending.get(lower(params[1] || ''));
        if (!join) break;
        this.pending.delete(lower(params[1]));
        this.channels.add(lower(params[1]));
        join.resolve({
          nick: this.nick,
          occupants: join.names.map((name) => ({
            nick: name.replace(/^[@+%&~]+/, ''),
            role: /^[@&~]/.test(name) ? 'moderator' : 'participant',
          })),
        });
        break;
      }
      case '471': case '473': case '474': case '475': case '403': case '405': {
        const join = this.pending.get(lower(params[1] || ''));
        if (!join) break;
        this.pending.delete(lower(params[1]));
        const why = { 471: [503, 'service-unavailable'], 473: [407, 'registration-required'],
          474: [403, 'forbidden'], 475: [401, 'not-authorized'] }[command] || [404, 'item-not-found'];
        join.reject(new Refused(why[0], why[1], 'cancel', params[2] || 'cannot join'));
        break;
      }
      case 'JOIN': if (lower(from) !== lower(this.nick)) room({ type: 'occupant', occupant: { nick: from } }); break;
      case 'PART': if (lower(from) !== lower(this.nick)) room({ type: 'left', nick: from, reason: params[1] }); break;
      case 'KICK': room({ type: 'kicked', nick: params[1], by: from, reason: params[2] }); break;
      case 'TOPIC': room({ type: 'subject', text: params[1] || '', by: from }); break;
      case 'QUIT': case 'NICK':
        for (const chan of this.channels) {
          if (reporter(chan) !== this || lower(from) === lower(this.nick)) continue;
          const event = command === 'QUIT' ? { type: 'left', nick: from, reason: params[0] } : { type: 'renamed', old: from, new: params[0] };
          request('room/event', { room: chan, event });
        }
        if (command === 'NICK' && lower(from) === lower(this.nick)) this.nick = params[0];
        break;
      case 'PRIVMSG': case 'NOTICE': {
        if (!from || from.includes('.')) break;                 // server notices
        const text = (params[1] || '').replace(/^\x01ACTION (.*)\x01$/, '/me $1');
        if (/^[#&]/.test(channel)) {
          if (!ours(channel, from)) room({ type: 'message', event_id: eventId(), nick: from, text });
        } else if (lower(channel) === lower(this.nick)) {
          request('message/received', { event_id: eventId(), user: this.user, contact: from, text });
        }
        break;
      }
    }
  }

  join(channel) {
    return new Promise((resolve, reject) => {
      this.pending.set(lower(channel), { names: [], resolve, reject });
      this.write(`JOIN ${channel}`);
      setTimeout(() => reject(new Refused(504, 'remote-server-timeout', 'wait', 'the IRC server did not answer the join')), 15000);
    });
  }
}

// Params must carry these fields as non-empty strings (a room: a channel name), or -32602.
function need(p, ...fields) {
  for (const field of fields) {
    const value = p[field];
    if (typeof value !== 'string' || !value || (field === 'room' && !/^[#&][^\s,\x07]+$/.test(value))) {
      throw Object.assign(new Error(`"${field}" is missing or not valid`), { code: -32602 });
    }
  }
}

// The user's connection, opened (with `nick`) if they have none; resolves once registered.
async function connection(user, nick) {
  let conn = conns.get(user);
  if (!conn) { conn = new Conn(user, nick || user.split('@')[0]); conns.set(user, conn); }
  await conn.opened;
  return conn;
}

const HANDLERS = {
  initialize(p) {
    if (!p.protocol.versions.includes(1)) throw Object.assign(new Refused(-32602, 'bad-request', 'cancel', 'this bridge speaks protocol 1'), { fatal: true });
    const [host, port] = String((p.config || {}).server || '127.0.0.1:6667').split(':');
    server = { host, port: Number(port) || 6667 };
    return {
      protocol: { version: 1, revision: '1.0' },
      bridge: { name: 'IRC (Node.js)', version: '1.0', gateway_type: 'irc',
        prompt: { description: 'Enter the nick of someone on IRC', prompt: 'Nick' } },
      capabilities: { rooms: true, receipts_on_accept: true },
      addressing: { room_pattern: '[#&][^\\s,\\x07]+', contact_pattern: '[A-Za-z\\[\\]\\\\`_^{|}][A-Za-z0-9\\[\\]\\\\`_^{|}-]*',
        contact_hint: 'an IRC nick: letters, digits and []\\`_^{|}-' },
    };
  },
  async 'room/join'(p) {
    need(p, 'user', 'room', 'nick');
    const conn = await connection(p.user, p.nick);
    if (conn.channels.has(lower(p.room))) return { nick: conn.nick, occupants: [{ nick: conn.nick }] };
    const joined = await conn.join(p.room);
    return joined;
  },
  'room/leave'(p) {
    need(p, 'user', 'room');
    const conn = conns.get(p.user);
    if (conn && conn.channels.delete(lower(p.room))) conn.write(`PART ${p.room}`);
    return {};
  },
  async 'room/send'(p) {
    need(p, 'user', 'room', 'text', 'txn_id');
    const conn = conns.get(p.user);
    if (!conn || !conn.channels.has(lower(p.room))) throw new Refused(406, 'not-acceptable', 'cancel', 'you are not in this channel');
    for (const line of lines(p.text)) conn.write(`PRIVMSG ${p.room} :${line}`);
    return { status: 'reflect', id: 'irc-' + p.txn_id };
  },
  async 'message/send'(p) {
    need(p, 'user', 'contact', 'text', 'txn_id');
    const conn = await connection(p.user);
    for (const line of lines(p.text)) conn.write(`PRIVMSG ${p.contact} :${line}`);
    return { status: 'sent', id: 'irc-' + p.txn_id };
  },
  'session/start': () => ({}),
  'session/stop'(p) {
    need(p, 'user');
    const conn = conns.get(p.user);
    if (conn) conn.write('QUIT :leaving');
    return {};
  },
  ping: () => ({}),
  shutdown() {
    for (const conn of conns.values()) conn.write('QUIT :Jabbridge is stopping');
    return null;
  },
};

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { if (line.trim()) log('not JSON, ignored:', line.slice(0, 80)); return; }
  if (!msg || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.method !== 'string') return;
  if (msg.method === 'exit') process.exit(0);
  if (!('id' in msg)) return;                      // notifications we do not know are ignored
  const handler = HANDLERS[msg.method];
  try {
    if (!handler) throw new Refused(-32601, 'feature-not-implemented', 'cancel', 'unknown method ' + msg.method);
    send({ jsonrpc: '2.0', id: msg.id, result: await handler(msg.params || {}) });
  } catch (e) {
    const error = e instanceof Refused ? e.error : { code: -32602, message: 'invalid params: ' + e.message };
    send({ jsonrpc: '2.0', id: msg.id, error });
    if (e.fatal) process.exit(1);
  }
}).on('close', () => process.exit(0));             // EOF on stdin: the core is gone
