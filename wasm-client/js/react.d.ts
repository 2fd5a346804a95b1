// Types of `stateline-client/react`.
import type { Client, Item } from "./stateline.js";

/** `loading`: no value yet; `live`: the socket is open and the value current; `offline`: the
 * last value seen, while the client reconnects (the subscription resumes by itself); `error`:
 * the subscription was refused (`error` says why). */
export type Status = "loading" | "live" | "offline" | "error";

export interface StatelineState<T = unknown> {
  /** `undefined` until the first update; a key's value (`null` when absent), or a glob's or a
   * subtree's items, newest first. */
  value: T | null | Item<T>[] | undefined;
  status: Status;
  error: (Error & { code?: string; status?: number }) | null;
  /** The subscription's version (hex), once there is a value. */
  version: string | null;
  /** The client the hook uses (to write: `db.set`, `db.patch`, ...). */
  db: Client;
}

export interface UseStatelineOptions {
  /** A client of your own (`Stateline.connect(...)`). */
  db?: Client;
  /** The server's URL, when not the page's own origin: the connection is shared per URL. */
  base?: string;
}

/** Follows a key, a glob (`todos/*`) or a subtree (`todos/`) and re-renders on every change;
 * a `null` pattern follows nothing. */
export function useStateline<T = unknown>(pattern: string | null, options?: UseStatelineOptions): StatelineState<T>;
