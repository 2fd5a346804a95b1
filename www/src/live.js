// The UI's live views, on the project's own client (`/_client.js` defines `Stateline`): one
// multiplexed connection for the whole UI, its state shown in the header.
const listeners = [];
let client = null;

function emit(state) {
  for (const f of listeners) f(state);
}

export const live = {
  /** Connects (with the bearer token, if any). */
  start(token) {
    if (!globalThis.Stateline) {
      emit("unavailable");
      return;
    }
    client = globalThis.Stateline.connect(location.origin, { shared: false, token: token || undefined });
    client.on("state", emit);
    emit(client.state);
  },
  /** Reconnects, e.g. with a new token; open views re-subscribe when the page re-renders. */
  reconnect(token) {
    const old = client;
    client = null;
    old?.close();
    this.start(token);
  },
  onState(f) {
    listeners.push(f);
  },
  /** Watches one key: `f(value, {revision, created, updated, initial})` with the current value,
   * then after every change (`revision` null when unknown). */
  watch(key, f) {
    if (!client) return () => {};
    const stop = client.subscribe(key, (u) => {
      const last = u.changes[u.changes.length - 1];
      const known = last && last.revision >= 0;
      f(u.value ?? null, {
        revision: known ? last.revision : null,
        created: known ? last.created : null,
        updated: known ? last.updated : null,
        initial: u.initial,
      });
    });
    return () => stop();
  },
  /** Watches a glob or subtree: `f(items, changedKeys)` where items maps key → value. */
  watchMany(pattern, f) {
    if (!client) return () => {};
    const stop = client.subscribe(pattern, (u) => {
      const items = new Map((u.value || []).map((it) => [it.key, it.value]));
      f(items, u.changes.map((c) => c.key));
    });
    return () => stop();
  },
};
