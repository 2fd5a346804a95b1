// The JavaScript face of the Stateline client: `Stateline` and `AtomKV` on top of the wasm
// `Client` (src/lib.rs), which runs the core's sync state machine. This file is pasted into both
// builds (the classic single-file script and the ES module) by build.mjs, so it uses no
// import/export and defines one function; everything else is inside it.
//
// Invariant: no sync logic here either. Subscriptions, versions, resume, the write queue and
// backoff live in the core; this file turns its events into promises, callbacks and async
// iterators.
function __statelineApi(loadWasm, env) {
  "use strict";
  var nextListener = 1;

  function StatelineError(e) {
    var err = new Error("Stateline: " + (e.detail || e.code || "request failed"));
    err.name = "StatelineError";
    err.code = e.code;
    err.status = e.status;
    err.conflict = !!e.conflict;
    return err;
  }

  function trimKey(k) {
    return String(k).replace(/^\/+/, "");
  }

  // An async iterator that buffers: a slow consumer never loses an event (memory grows instead;
  // `for await` drains it). `stop` runs when the consumer breaks out or calls return().
  function buffered(stop) {
    var queue = [], waiting = [], done = false, failure = null;
    var it = {
      push: function (v) {
        if (done) return;
        if (waiting.length) waiting.shift().resolve({ value: v, done: false });
        else queue.push(v);
      },
      fail: function (e) {
        failure = e;
        while (waiting.length) waiting.shift().reject(e);
      },
      next: function () {
        if (queue.length) return Promise.resolve({ value: queue.shift(), done: false });
        if (failure) return Promise.reject(failure);
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise(function (resolve, reject) { waiting.push({ resolve: resolve, reject: reject }); });
      },
      return: function () {
        if (!done) {
          done = true;
          queue.length = 0;
          stop();
          while (waiting.length) waiting.shift().resolve({ value: undefined, done: true });
        }
        return Promise.resolve({ value: undefined, done: true });
      },
    };
    it[Symbol.asyncIterator] = function () { return it; };
    return it;
  }

  // `n` random bytes in hex (crypto's where there is one).
  function randomHex(n) {
    var b = new Uint8Array(n), c = globalThis.crypto;
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (var i = 0; i < n; i++) b[i] = Math.floor(Math.random() * 256);
    return Array.from(b, function (x) { return (x < 16 ? "0" : "") + x.toString(16); }).join("");
  }

  function Client(base, opts) {
    var self = this;
    opts = opts || {};
    this.base = String(base).replace(/\/+$/, "");
    this.state = "connecting";
    this._listeners = new Map();
    this._replies = new Map();
    this._on = { state: new Set(), conflict: new Set(), error: new Set() };
    var config = JSON.stringify({
      backoffBase: opts.backoffBase, backoffMax: opts.backoffMax,
      pingInterval: opts.pingInterval, pingTimeout: opts.pingTimeout, maxQueue: opts.maxQueue,
      token: opts.token,
      optimistic: opts.optimistic === true,
      // Every write carries an id with this prefix: the server answers a repeat instead of
      // applying it again, so writes in flight are resent after a reconnect.
      writeIds: randomHex(16),
    });
    // Writes kept in the outbox (`persist`): request id → row.
    this._rows = new Map();
    this.ready = loadWasm().then(function (wasm) {
      var WS = opts.WebSocket || env.WebSocket();
      if (!WS) throw new Error("Stateline: no WebSocket in this environment; pass { WebSocket } (in Node 20: the ws package)");
      // One socket per browser: the client's socket is a virtual connection to the leader tab.
      if (opts.shareTabs && globalThis.BroadcastChannel && globalThis.navigator && navigator.locks) {
        WS = tabsFor(self.base, wasm, WS).Socket;
      }
      self._c = new wasm.Client(self.base, WS, function (json) { self._event(JSON.parse(json)); }, config);
      // What an earlier page kept is taken back before the socket opens and before any call
      // made meanwhile: its writes go first, in the order they were made.
      return opts.persist ? self._restore(String(opts.persist)) : null;
    }).then(function () {
      self._c.connect();
      return self;
    });
    // A failed load is reported to whoever awaits; keep it from being an unhandled rejection.
    this.ready.catch(function (e) { self._emit("error", e); });
  }

  Client.prototype._emit = function (type, v) {
    this._on[type].forEach(function (f) { try { f(v); } catch (e) { setTimeout(function () { throw e; }); } });
  };

  Client.prototype._event = function (ev) {
    var self = this;
    if (ev.type === "state") {
      this.state = ev.state;
      this._emit("state", ev.state);
    } else if (ev.type === "update") {
      var out = { path: ev.pattern, value: ev.value, changes: ev.changes, initial: ev.initial, version: ev.version, cached: ev.cached };
      if (this._store && !ev.cached) this._store.dirty(ev.pattern);
      ev.listeners.forEach(function (id) {
        var l = self._listeners.get(id);
        if (l) l.update(out);
      });
    } else if (ev.type === "subFailed") {
      var err = StatelineError(ev.error);
      ev.listeners.forEach(function (id) {
        var l = self._listeners.get(id);
        self._listeners.delete(id);
        if (l) l.fail(err);
      });
      this._emit("error", err);
    } else if (ev.type === "reply") {
      var r = this._replies.get(ev.req);
      this._replies.delete(ev.req);
      var row = this._rows.get(ev.req);
      if (row !== undefined) {
        this._rows.delete(ev.req);
        this._store.drop(row.key);
        // A kept write from before a reload has no caller left to tell: a refusal is an error
        // event (a lost compare-and-swap is the conflict event below).
        if (row.restored && !ev.ok && !ev.error.conflict) {
          var lost = StatelineError(ev.error);
          lost.write = row.msg;
          this._emit("error", lost);
        }
      }
      if (!ev.ok && ev.queued && ev.error.conflict) {
        // A write made offline lost its compare-and-swap: say so even if nobody awaits it.
        this._emit("conflict", { key: r ? r.key : row && (row.msg.key || row.msg.path), error: ev.error });
      }
      if (r) r.done(ev);
    }
  };

  // Sends a `/_ws` write; `done` gets the reply event.
  Client.prototype._write = function (msg, done) {
    var self = this;
    return this.ready.then(function () {
      return new Promise(function (resolve, reject) {
        var req = self._c.write(JSON.stringify(msg));
        if (self._store) self._keep(req);
        self._replies.set(req, {
          key: msg.key || msg.path,
          done: function (ev) {
            try { resolve(done(ev)); } catch (e) { reject(e); }
          },
        });
      });
    });
  };

  function plain(ev) {
    if (!ev.ok) throw StatelineError(ev.error);
    return ev.value;
  }

  Client.prototype.set = function (key, value, o) {
    return this._write({ op: "set", key: trimKey(key), value: value, ttl: o && o.ttl }, plain);
  };
  Client.prototype.push = function (path, value, o) {
    var p = trimKey(path);
    if (!/(^|\/)\*$/.test(p)) p = p.replace(/\/+$/, "") + "/*";
    return this._write({ op: "push", path: p, value: value, ttl: o && o.ttl }, plain);
  };
  Client.prototype.patch = function (key, value, o) {
    return this._write({ op: "patch", key: trimKey(key), value: value, type: (o && o.type) || "merge" }, plain);
  };
  Client.prototype.delete = function (key) {
    return this._write({ op: "del", key: trimKey(key) }, plain);
  };
  Client.prototype.incr = function (key, by) {
    return this._write({ op: "incr", key: trimKey(key), by: by === undefined ? 1 : by }, plain);
  };
  // Compare-and-swap on the wire: `next` is the revision the key will have (AtomKV's convention:
  // the current revision + 1; 0 creates). Resolves { ok: true, key, revision, etag } or
  // { ok: false, conflict: true, ... }.
  Client.prototype._cas = function (key, value, next) {
    var k = trimKey(key);
    return this._write({ op: "set", key: k, value: value, rev: next }, function (ev) {
      if (ev.ok) return { ok: true, key: k, revision: ev.value.revision, etag: ev.value.etag };
      if (ev.error.conflict) return { ok: false, conflict: true, key: k, code: ev.error.code, detail: ev.error.detail };
      throw StatelineError(ev.error);
    });
  };
  // Compare-and-swap: `revision` is the revision the caller read (what `get` or a subscription
  // reported for the current value); `null` or -1 (absent) creates only if the key is absent.
  // The write applies only if the key is still at that revision.
  Client.prototype.update = function (key, value, revision) {
    if (revision === null || revision === -1) return this._cas(key, value, 0);
    if (typeof revision !== "number" || !Number.isInteger(revision) || revision < 0) {
      return Promise.reject(new TypeError("Stateline: update(key, value, revision): revision must be the revision read (an integer from 0), or null (or -1) to create only if absent"));
    }
    return this._cas(key, value, revision + 1);
  };
  function item(m) {
    return { key: m.path, value: m.data, created: m.created, updated: m.updated };
  }
  // GET over HTTP. A key: { key, value, revision, created, updated }, or null when absent. A glob
  // (`todos/*`): its items, newest first, each { key, value, created, updated } (`[]` when none;
  // a list carries no revisions: get a key by name, or subscribe). A subtree (`todos/`): every
  // key below it at any depth, the same way.
  Client.prototype.get = function (key) {
    var self = this, k = trimKey(key);
    return this.ready.then(function () { return self._c.get(k); }).then(function (json) {
      var r = JSON.parse(json);
      if (r.status === 404) return null;
      if (r.status !== 200) throw StatelineError({ status: r.status, code: "http", detail: String(r.body).trim() });
      var m = r.body;
      if (Array.isArray(m)) return m.map(item);
      return { key: k, value: m.data, revision: r.revision, created: m.created, updated: m.updated };
    });
  };

  // subscribe(path, callback) → an unsubscribe function; subscribe(path) → an async iterator
  // (with .unsubscribe()). Either way: the current value first, then every change, in order.
  Client.prototype.subscribe = function (path, callback) {
    var self = this, id = nextListener++, stopped = false;
    function stop() {
      if (stopped) return;
      stopped = true;
      self._listeners.delete(id);
      self.ready.then(function () { self._c.unsubscribe(id); }, function () {});
    }
    var sink;
    if (typeof callback === "function") {
      sink = { update: callback, fail: function (e) { self._emit("error", e); } };
    } else {
      var it = buffered(stop);
      sink = { update: it.push, fail: it.fail };
    }
    this._listeners.set(id, sink);
    this.ready.then(function () {
      if (stopped) return;
      try {
        self._c.subscribe(id, String(path));
      } catch (e) {
        self._listeners.delete(id);
        sink.fail(StatelineError(typeof e === "string" ? JSON.parse(e) : { detail: String(e) }));
      }
    }, function (e) { sink.fail(e); });
    if (it) {
      it.unsubscribe = function () { it.return(); };
      return it;
    }
    stop.unsubscribe = stop;
    return stop;
  };

  // ---- transactions, history, disconnect writes, presence ----------------------------------

  // Segments percent-encoded (UTF-8 keys, reserved characters), `*` kept.
  function keyPath(k) {
    return trimKey(k).split("/").map(encodeURIComponent).join("/").replace(/%2A/g, "*");
  }
  // An HTTP reply that is not 2xx as a StatelineError with the server's problem document: its
  // fields (e.g. which compare failed) are on `err.body`, and copied onto the error where they
  // do not clash.
  function httpError(r) {
    var b = r.body && typeof r.body === "object" ? r.body : {};
    var code = b.code || "http";
    var err = StatelineError({ status: r.status, code: code, detail: b.detail || String(r.body).trim(), conflict: /^(revision-conflict|precondition-failed|exists)$/.test(code) });
    err.body = r.body;
    for (var f in b) if (!(f in err)) err[f] = b[f];
    return err;
  }
  Client.prototype._http = function (method, path, body) {
    var self = this;
    return this.ready.then(function () {
      return self._c.request(method, path, body === undefined ? undefined : JSON.stringify(body));
    }).then(function (json) { return JSON.parse(json); });
  };
  function txWrite(w) {
    var m = {};
    for (var f in w) m[f] = w[f];
    if (m.key !== undefined) m.key = trimKey(m.key);
    if (m.path !== undefined) m.path = trimKey(m.path);
    return m;
  }
  // Several writes applied together if every compare holds, else none (POST /_tx).
  // `transaction({if: [...], then: [...]})` resolves the server's `{ ok, version, results }` or
  // rejects with the `precondition-failed` error (status 409; `err.body` names the compare).
  // `transaction()` returns a builder: `.ifRevision(k, r)`, `.ifAbsent(k)`, `.ifExists(k)`,
  // `.set`, `.push`, `.patch`, `.delete`, `.incr`, then `.commit()`.
  Client.prototype.transaction = function (tx) {
    var self = this;
    if (tx === undefined) return builder(this);
    var body = {
      if: (tx["if"] || []).map(function (c) { var m = txWrite(c); return m; }),
      then: (tx.then || []).map(txWrite),
    };
    return this._http("POST", "_tx", body).then(function (r) {
      if (r.status !== 200) throw httpError(r);
      return r.body;
    });
  };
  function builder(db) {
    var tx = { if: [], then: [] };
    var b = {
      ifRevision: function (key, revision) { tx["if"].push({ key: key, revision: revision }); return b; },
      ifAbsent: function (key) { tx["if"].push({ key: key, absent: true }); return b; },
      ifExists: function (key) { tx["if"].push({ key: key, exists: true }); return b; },
      set: function (key, value, o) { tx.then.push({ op: "set", key: key, value: value, ttl: o && o.ttl }); return b; },
      push: function (path, value, o) {
        var p = trimKey(path);
        if (!/(^|\/)\*$/.test(p)) p = p.replace(/\/+$/, "") + "/*";
        tx.then.push({ op: "push", path: p, value: value, ttl: o && o.ttl });
        return b;
      },
      patch: function (key, value, o) { tx.then.push({ op: "patch", key: key, value: value, type: (o && o.type) || "merge" }); return b; },
      delete: function (key) { tx.then.push({ op: "del", key: key }); return b; },
      incr: function (key, by) { tx.then.push({ op: "incr", key: key, by: by === undefined ? 1 : by }); return b; },
      toJSON: function () { return tx; },
      commit: function () { return db.transaction(tx); },
    };
    return b;
  }

  // A key's last `n` versions (default 10), newest first: `{ revision, updated, value }`, a delete as
  // `{ revision, updated, deleted: true }` (`GET /<key>?history=n`). `[]` when the server has none.
  Client.prototype.history = function (key, n) {
    var q = n === undefined ? "10" : String(n);
    return this._http("GET", keyPath(key) + "?history=" + encodeURIComponent(q)).then(function (r) {
      if (r.status === 404) return [];
      if (r.status !== 200) throw httpError(r);
      if (!Array.isArray(r.body)) throw StatelineError({ status: 0, code: "unsupported", detail: "this server keeps no history (GET ?history answered no list)" });
      return r.body.map(function (v) {
        var o = { revision: v.revision, updated: v.updated, value: v.deleted ? null : v.data, deleted: !!v.deleted };
        return o;
      });
    });
  };

  // Firebase's onDisconnect: writes the server makes when this connection ends (registered
  // again after each reconnect, by the core). `cancel()` cancels every one registered for the
  // key through this client.
  Client.prototype.onDisconnect = function (key) {
    var self = this, k = trimKey(key);
    if (!this._onclose) this._onclose = new Map();
    function register(write) {
      return self._write({ op: "onclose", write: write }, plain).then(function (v) {
        if (!v.cancelled) {
          if (!self._onclose.has(k)) self._onclose.set(k, new Set());
          self._onclose.get(k).add(v.onclose);
        }
        return v;
      });
    }
    return {
      set: function (value) { return register({ op: "set", key: k, value: value }); },
      update: function (patch, o) { return register({ op: "patch", key: k, value: patch, type: (o && o.type) || "merge" }); },
      remove: function () { return register({ op: "del", key: k }); },
      cancel: function () {
        var hs = Array.from(self._onclose.get(k) || []);
        self._onclose.delete(k);
        return Promise.all(hs.map(function (h) {
          return self._write({ op: "onclose_cancel", onclose: h }, plain);
        })).then(function () {});
      },
    };
  };

  // This connection's id (the member key in presence rooms): random, kept across reconnects.
  Client.prototype._id = function () {
    if (!this.id) this.id = randomHex(8);
    return this.id;
  };

  // Presence: `presence(room, value)` joins `room` as `presence/<room>/<connection id>`, a key
  // leased to this connection (deleted by the server when it ends, taken again on reconnect),
  // and watches the room's members; `presence(room)` only watches. The handle: `members` (each
  // `{ id, key, value, self, joined }`, in join order), `on("change" | "join" | "leave", f)`,
  // `update(value)` (joins if watching only), `leave()` (stays watching) and `close()`.
  Client.prototype.presence = function (room, value) {
    var self = this, r = String(room);
    if (!r || r.indexOf("/") >= 0 || r.indexOf("*") >= 0) throw new TypeError("Stateline: presence(room): a room is one non-empty key segment (no / or *)");
    var id = this._id(), key = "presence/" + r + "/" + id;
    var on = { change: new Set(), join: new Set(), leave: new Set() };
    var present = new Map(), joined = false, last = null;
    function emit(type, v) {
      on[type].forEach(function (f) { try { f(v); } catch (e) { setTimeout(function () { throw e; }); } });
    }
    function member(it) {
      var mid = it.key.slice(it.key.lastIndexOf("/") + 1);
      return { id: mid, key: it.key, value: it.value, self: mid === id, joined: it.created };
    }
    var h = {
      room: r, id: id, key: key, members: [],
      on: function (type, f) {
        if (!on[type]) throw new Error("Stateline: unknown presence event " + type + " (change, join, leave)");
        on[type].add(f);
        return h;
      },
      off: function (type, f) { if (on[type]) on[type].delete(f); return h; },
      update: function (v) {
        joined = true;
        return self._write({ op: "set", key: key, value: v === undefined ? true : v, lease: true }, plain);
      },
      leave: function () {
        if (!joined) return Promise.resolve();
        joined = false;
        return self._write({ op: "del", key: key }, plain).then(function () {}, function (e) {
          if (e.code !== "not-found") throw e;
        });
      },
      close: function () {
        stop();
        return h.leave();
      },
    };
    var stop = this.subscribe("presence/" + r + "/*", function (u) {
      var items = (u.value || []).map(member);
      items.sort(function (a, b) { return a.joined - b.joined || (a.id < b.id ? -1 : 1); });
      var now = new Map(items.map(function (m) { return [m.id, m]; }));
      h.members = items;
      now.forEach(function (m, k) { if (!present.has(k)) emit("join", m); });
      present.forEach(function (m, k) { if (!now.has(k)) emit("leave", m); });
      present = now;
      // The server renews a lease by writing the same value again: no change for the page.
      var sig = JSON.stringify(items.map(function (m) { return [m.id, m.value]; }));
      if (sig !== last) { last = sig; emit("change", items); }
    });
    h.joined = value === undefined ? Promise.resolve(null) : h.update(value);
    h.joined.catch(function (e) { self._emit("error", e); });
    return h;
  };

  // ---- shareTabs: one socket per browser ---------------------------------------------------
  //
  // The tabs of one origin that connect to one server with `shareTabs` share one /_ws socket.
  // The tab holding the Web Lock "stateline-tabs <base>" is the leader: it opens the socket and
  // runs the core's hub (core/src/sync/share.rs), which multiplexes the tabs' connections onto
  // it. Every tab's client (the leader's too) drives a TabSocket, a WebSocket look-alike that is
  // a virtual connection to the leader over the BroadcastChannel of the same name. Messages:
  //   to the leader   {t:"open", c, tab}  {t:"msg", c, d}  {t:"close", c}  {t:"bye", tab}
  //   from the leader {t:"opened", c, l}  {t:"msg", c, d}  {t:"closed", c}  {t:"leader", l}
  // When the leader tab goes, the lock passes to another tab, which says so ("leader"): every
  // connection to the old one closes, and each client reconnects with its backoff, resumes its
  // subscriptions from their versions and resends its writes in flight (their ids make a repeat
  // harmless). The leader also asks the lock manager which tabs are alive (each holds its own
  // lock "stateline-tab <id>") so a tab that crashed leaves too.
  var tabsByBase = new Map();

  function tabsFor(base, wasm, WS) {
    var t = tabsByBase.get(base);
    if (!t) { t = makeTabs(base, wasm, WS); tabsByBase.set(base, t); }
    return t;
  }

  function makeTabs(base, wasm, WS) {
    var me = randomHex(8), name = "stateline-tabs " + base;
    var channel = new BroadcastChannel(name);
    var mine = new Map(); // this tab's sockets: connection id → TabSocket
    var lead = null; // when leading: { hub, ws, open, conns: Map(c → tab), waiting: [c] }

    function toLeader(m) {
      if (lead) queueMicrotask(function () { atLeader(m); }); else channel.postMessage(m);
    }
    function toConn(c, m) {
      if (mine.has(c)) queueMicrotask(function () { atTab(m); }); else channel.postMessage(m);
    }
    channel.onmessage = function (e) {
      var m = e.data;
      if (m.t === "open" || m.t === "close" || m.t === "bye" || (m.t === "msg" && lead && lead.conns.has(m.c))) {
        if (lead) atLeader(m);
      } else {
        atTab(m);
      }
    };

    // ---- a tab's sockets
    function atTab(m) {
      if (m.t === "leader") {
        // Connections to the old leader are gone; one still opening asks the new one (its
        // "open" may have gone to nobody).
        mine.forEach(function (s) {
          if (s.leader === null) toLeader({ t: "open", c: s.c, tab: me });
          else if (s.leader !== m.l) s._closed();
        });
        return;
      }
      var s = mine.get(m.c);
      if (!s) return;
      if (m.t === "opened") {
        if (s.readyState !== 0) return;
        s.leader = m.l; s.readyState = 1;
        if (s.onopen) s.onopen({});
      }
      else if (m.t === "msg") { if (s.onmessage) s.onmessage({ data: m.d }); }
      else if (m.t === "closed") s._closed();
    }
    function Socket() {
      this.c = 1 + Math.floor(Math.random() * 9007199254740990);
      this.leader = null;
      this.readyState = 0;
      mine.set(this.c, this);
      toLeader({ t: "open", c: this.c, tab: me });
    }
    Socket.prototype.send = function (d) { toLeader({ t: "msg", c: this.c, d: d }); };
    Socket.prototype.close = function () {
      if (!mine.delete(this.c)) return;
      this.readyState = 3;
      toLeader({ t: "close", c: this.c });
    };
    Socket.prototype._closed = function () {
      if (!mine.delete(this.c)) return;
      this.readyState = 3;
      if (this.onclose) this.onclose({ code: 1006 });
    };

    // ---- the leader
    function run(out) {
      for (var i = 0; i < out.length; i += 2) {
        if (out[i] === 0) { if (lead.ws && lead.open) lead.ws.send(out[i + 1]); }
        else toConn(out[i], { t: "msg", c: out[i], d: out[i + 1] });
      }
    }
    function socket() {
      if (lead.ws) return;
      var ws = lead.ws = new WS(base.replace(/^http/, "ws") + "/_ws");
      ws.binaryType = "arraybuffer";
      ws.onopen = function () {
        if (lead.ws !== ws) return;
        lead.open = true;
        lead.hub = new wasm.Hub();
        lead.waiting.splice(0).forEach(function (c) {
          if (lead.conns.has(c)) toConn(c, { t: "opened", c: c, l: me });
        });
      };
      ws.onmessage = function (e) {
        if (lead.ws !== ws) return;
        var d = typeof e.data === "string" ? e.data : new TextDecoder().decode(e.data);
        run(lead.hub.fromServer(d));
      };
      ws.onclose = ws.onerror = function () {
        if (lead.ws !== ws) return;
        // Every connection closes with it; the clients reconnect (and this opens a new one).
        lead.ws = null; lead.open = false; lead.hub = null;
        var cs = Array.from(lead.conns.keys()).concat(lead.waiting.splice(0));
        lead.conns.clear();
        cs.forEach(function (c) { toConn(c, { t: "closed", c: c }); });
      };
    }
    function gone(c) {
      if (!lead.conns.delete(c)) return;
      if (lead.hub) run(lead.hub.connGone(c));
      if (lead.conns.size === 0) {
        // Nobody left: the socket goes after a grace period (a reload comes straight back).
        setTimeout(function () {
          if (lead.conns.size === 0 && lead.ws) { var ws = lead.ws; lead.ws = null; lead.open = false; lead.hub = null; ws.close(); }
        }, 5000);
      }
    }
    function atLeader(m) {
      if (m.t === "open") {
        lead.conns.set(m.c, m.tab);
        if (lead.open) toConn(m.c, { t: "opened", c: m.c, l: me });
        else { lead.waiting.push(m.c); socket(); }
      } else if (m.t === "msg") {
        if (lead.open && lead.conns.has(m.c)) run(lead.hub.fromConn(m.c, m.d));
      } else if (m.t === "close") {
        gone(m.c);
      } else if (m.t === "bye") {
        lead.conns.forEach(function (tab, c) { if (tab === m.tab) gone(c); });
      }
    }
    // Tabs that crashed without a goodbye: their connections end when their lock is gone.
    function sweep() {
      if (!lead || lead.conns.size === 0) return;
      navigator.locks.query().then(function (q) {
        var alive = new Set((q.held || []).map(function (l) { return l.name; }));
        lead.conns.forEach(function (tab, c) { if (!alive.has("stateline-tab " + tab)) gone(c); });
      }, function () {});
    }

    navigator.locks.request("stateline-tab " + me, function () { return new Promise(function () {}); });
    navigator.locks.request(name, function () {
      lead = { hub: null, ws: null, open: false, conns: new Map(), waiting: [] };
      setInterval(sweep, 5000);
      channel.postMessage({ t: "leader", l: me });
      atTab({ t: "leader", l: me });
      return new Promise(function () {});
    });
    globalThis.addEventListener && globalThis.addEventListener("pagehide", function () {
      channel.postMessage({ t: "bye", tab: me });
    });
    return { Socket: Socket };
  }

  // ---- persist: the cache and the outbox in IndexedDB -------------------------------------
  //
  // One database per persist name and server, "stateline:<name> <base>", schema version 1:
  //   caches  key: a subscription's pattern  value: its cache as the core gives it (JSON text:
  //           version, view, key states; written 100 ms after the changes it holds)
  //   outbox  key: a number, in the order writes were made  value: {msg}, a write as it went
  //           on the wire with its id, deleted when the server answers it
  // A later schema adds a version and an `onupgradeneeded` step from `e.oldVersion`. What the
  // core keeps and takes back is decided in the core (core/src/sync/persist.rs); this moves it.
  var SCHEMA = 1;

  function storageError(e) {
    var full = e && e.name === "QuotaExceededError";
    var err = StatelineError({ code: full ? "storage-full" : "storage", detail: "storage: " + (e && e.message || e) });
    err.cause = e;
    return err;
  }

  function done(r) {
    return new Promise(function (resolve, reject) {
      r.onsuccess = function () { resolve(r.result); };
      r.onerror = function () { reject(r.error); };
    });
  }

  function openDb(name) {
    var idb = globalThis.indexedDB;
    if (!idb) return Promise.reject(new Error("no IndexedDB in this environment"));
    var req = idb.open(name, SCHEMA);
    req.onupgradeneeded = function (e) {
      var db = req.result;
      if (e.oldVersion < 1) {
        db.createObjectStore("caches");
        db.createObjectStore("outbox");
      }
    };
    return done(req);
  }

  // Reads what was kept, and gives the client its store.
  Client.prototype._restore = function (name) {
    var self = this;
    return openDb("stateline:" + name + " " + this.base).then(function (db) {
      var t = db.transaction(["caches", "outbox"], "readonly");
      var c = t.objectStore("caches"), o = t.objectStore("outbox");
      return Promise.all([done(c.getAllKeys()), done(c.getAll()), done(o.getAllKeys()), done(o.getAll())])
        .then(function (r) {
          var store = new Store(db, self);
          r[0].forEach(function (pattern, i) {
            try { self._c.restoreCache(String(pattern), r[1][i]); } catch (e) {
              // Not a cache this client can use (another version wrote it): dropped, said.
              store.put("caches", pattern, undefined);
              self._emit("error", StatelineError(typeof e === "string" ? JSON.parse(e) : { detail: String(e) }));
            }
          });
          r[2].forEach(function (key, i) {
            var req = self._c.restoreWrite(r[3][i].msg);
            self._rows.set(req, { key: key, restored: true, msg: JSON.parse(r[3][i].msg) });
          });
          store.next = r[2].length ? r[2][r[2].length - 1] + 1 : 1;
          self._store = store;
        });
    }).catch(function (e) {
      // Without storage the client still works, in memory: said once, not silently.
      self._emit("error", storageError(e));
    });
  };

  // Keeps write `req` in the outbox while it waits for its answer.
  Client.prototype._keep = function (req) {
    var msg = this._c.outboxMessage(req);
    if (msg === undefined) return;
    var key = this._store.next++;
    this._rows.set(req, { key: key, restored: false });
    this._store.put("outbox", key, { msg: msg });
  };

  function Store(db, client) {
    this.db = db;
    this.client = client;
    this.next = 1;
    this.pending = new Set();
    this.timer = null;
  }
  // Writes one row (`value` undefined: deletes it); a failure (quota, a closed database) is an
  // error event.
  Store.prototype.put = function (name, key, value) {
    var client = this.client;
    try {
      var t = this.db.transaction(name, "readwrite"), s = t.objectStore(name);
      if (value === undefined) s.delete(key); else s.put(value, key);
      t.onabort = function () { client._emit("error", storageError(t.error)); };
    } catch (e) {
      client._emit("error", storageError(e));
    }
  };
  Store.prototype.drop = function (key) {
    this.put("outbox", key, undefined);
  };
  // A subscription changed: its cache is written 100 ms later (one write for a burst).
  Store.prototype.dirty = function (pattern) {
    var self = this;
    this.pending.add(pattern);
    if (this.timer === null) {
      this.timer = setTimeout(function () {
        self.timer = null;
        var ps = Array.from(self.pending);
        self.pending.clear();
        ps.forEach(function (p) {
          var c = self.client._c.cache(p);
          if (c !== undefined) self.put("caches", p, c);
        });
      }, 100);
    }
  };

  Client.prototype.on = function (type, f) {
    if (!this._on[type]) throw new Error("Stateline: unknown event " + type + " (state, conflict, error)");
    this._on[type].add(f);
    return this;
  };
  Client.prototype.off = function (type, f) {
    if (this._on[type]) this._on[type].delete(f);
    return this;
  };
  // Writes waiting for the connection.
  Client.prototype.queued = function () {
    return this._c ? this._c.queued() : 0;
  };
  Client.prototype.close = function () {
    var self = this;
    if (this._shared && shared.get(this._shared) === this) shared.delete(this._shared);
    return this.ready.then(function () {
      // Closing never throws at the caller: a socket that is still connecting is aborted quietly.
      try { self._c.close(); } catch (e) { self._emit("error", e); }
    }, function () {});
  };

  // One client (one /_ws socket) per server unless asked otherwise.
  var shared = new Map();
  var Stateline = {
    connect: function (base, opts) {
      var key = String(base).replace(/\/+$/, "");
      // A client with a token is its own: sharing would lend one caller's identity to another.
      if (opts && opts.token && opts.shareTabs) throw new TypeError("Stateline: shareTabs cannot carry a token (the shared socket's identity would be every tab's)");
      if (opts && (opts.shared === false || opts.token)) return new Client(key, opts);
      // One per server and persist name: a kept outbox is taken back by one client.
      var id = key + "\n" + (opts && opts.persist || "");
      var c = shared.get(id);
      if (!c) { c = new Client(key, opts); c._shared = id; shared.set(id, c); }
      return c;
    },
    Client: Client,
  };

  // AtomKV's hosted API (skeeto/atomkv), on one shared Stateline connection to AtomKV.BASE.
  function makeAtomKV(base) {
    var AtomKV = { BASE: base };
    function client() {
      if (!AtomKV.BASE) throw new Error("AtomKV: set AtomKV.BASE to the server's URL");
      return Stateline.connect(AtomKV.BASE);
    }
    AtomKV.get = function (key) {
      return client().get(key).then(function (r) { return r ? [r.value, r.revision] : [null, -1]; });
    };
    AtomKV.set = function (key, value) {
      return client().set(key, value).then(function () {});
    };
    // AtomKV's convention, unchanged: `revision` is the revision the key will have (read + 1).
    AtomKV.update = function (key, value, revision) {
      return client()._cas(key, value, revision).then(function (r) { return r.ok; }, function () { return false; });
    };
    // Every change after the call, none lost: buffered for slow consumers, resumed after reconnects.
    AtomKV.subscribe = async function* (keypath) {
      var sub = client().subscribe(keypath);
      try {
        for await (var ev of sub) {
          if (ev.initial) continue;
          for (var i = 0; i < ev.changes.length; i++) {
            var ch = ev.changes[i];
            yield ["/" + ch.key, ch.value === undefined ? null : ch.value, ch.revision];
          }
        }
      } finally {
        sub.unsubscribe();
      }
    };
    return AtomKV;
  }

  return { Stateline: Stateline, makeAtomKV: makeAtomKV };
}
