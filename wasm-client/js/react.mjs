// stateline-client/react: `useStateline(pattern)`, a React hook over the Stateline client.
// React is an optional peer dependency of the package: only this entry point imports it, and
// the single-file script (dist/stateline.js) does not contain it.
import { useEffect, useState } from "react";
import { Stateline } from "./stateline.mjs";

// The client a component uses: `options.db`, else the connection shared per server URL
// (`options.base`, default the page's own origin).
function client(options) {
  if (options && options.db) return options.db;
  const base = (options && options.base) || (globalThis.location && globalThis.location.origin);
  if (!base) throw new TypeError("useStateline: pass { base } (the server's URL) or { db } outside a page");
  return Stateline.connect(base);
}

// What the connection's state means for a value already shown.
const live = (state) => (state === "open" ? "live" : "offline");

/**
 * Follows a key, a glob (`todos/*`) or a subtree (`todos/`) and re-renders on every change.
 * Returns `{ value, status, error, version, db }`: `value` is `undefined` until the first
 * update (then as `subscribe` gives it: a key's value or `null`, a glob's items newest first);
 * `status` is `loading` (no value yet), `live` (the socket is open: the value is current),
 * `offline` (the last value seen, while reconnecting; the subscription resumes by itself) or
 * `error` (refused: `error` says why). A `null` pattern subscribes to nothing.
 */
export function useStateline(pattern, options) {
  const db = client(options);
  const [state, setState] = useState({ value: undefined, status: "loading", error: null, version: null, pattern });
  useEffect(() => {
    if (pattern == null) return undefined;
    let on = true;
    setState({ value: undefined, status: "loading", error: null, version: null, pattern });
    const onState = (st) => {
      if (on) setState((s) => (s.status === "loading" || s.status === "error" ? s : { ...s, status: live(st) }));
    };
    db.on("state", onState);
    // The iterator form: a refusal ends this subscription alone (the callback form reports it
    // on the client's `error` event, which every component would see).
    const sub = db.subscribe(pattern);
    (async () => {
      try {
        for await (const u of sub) {
          if (!on) break;
          setState({ value: u.value, status: live(db.state), error: null, version: u.version, pattern });
        }
      } catch (e) {
        if (on) setState((s) => ({ ...s, status: "error", error: e }));
      }
    })();
    return () => {
      on = false;
      sub.unsubscribe();
      db.off("state", onState);
    };
  }, [db, pattern]);
  // Until the effect ran for a new pattern, the old pattern's value is not this one's.
  const current = state.pattern === pattern;
  return {
    value: current ? state.value : undefined,
    status: current ? state.status : "loading",
    error: current ? state.error : null,
    version: current ? state.version : null,
    db,
  };
}
