// Types of the Stateline client (the ES module; the classic script defines the same
// `Stateline` and `AtomKV` as globals).

/** Connection state: `waiting` is the backoff between reconnect attempts. */
export type State = "connecting" | "open" | "waiting" | "closed";

export interface ConnectOptions {
  /** A WebSocket constructor (default: the global one; in Node 20 the `ws` package). */
  WebSocket?: unknown;
  /** First reconnect delay in ms (default 250); doubles up to `backoffMax` (default 10000). */
  backoffBase?: number;
  backoffMax?: number;
  /** Ping after this many ms without a message (default 20000); give up after `pingTimeout`. */
  pingInterval?: number;
  pingTimeout?: number;
  /** Writes held while offline (default 10000); more fail with code `queue-full`. */
  maxQueue?: number;
  /** A bearer token for servers with access rules: offered as the WebSocket's `bearer`
   * subprotocol and sent as `Authorization` on reads. */
  token?: string;
  /** `false`: a separate connection instead of the one shared per server URL. */
  shared?: boolean;
  /** Optimistic local writes: `set`, `patch` and `delete` of one key are shown to this
   * client's subscribers at once (changes marked `pending`) and reconciled with the server's
   * answer; a refused write is rolled back (its rollback reported as a change) and its promise
   * rejects. Default `false`: changes are reported as the server sends them. */
  optimistic?: boolean;
  /** Keeps each subscription's cache and the outbox of unanswered writes in IndexedDB under
   * this name (one database per name and server). After a reload, a subscription shows its
   * cached value at once (`cached: true`), resumes from its stored version, and the kept writes
   * are sent first, in order, each applied once. Storage failures are `error` events with
   * `code` `storage` or `storage-full` (the client goes on in memory). */
  persist?: string;
  /** One socket per browser: the tabs of this origin that connect to this server with
   * `shareTabs` share the /_ws socket of one of them (elected with Web Locks; another takes
   * over when it closes, and no write or update is lost). Each tab keeps its own
   * subscriptions, writes, leases and disconnect writes (run when that tab closes). Needs
   * Web Locks and BroadcastChannel; without them, or outside a browser, the client has its
   * own socket. Not with `token`. */
  shareTabs?: boolean;
}

/** One key's change. Numbers above 2^53 (ns timestamps) are rounded to JS numbers. */
export interface Change<T = unknown> {
  key: string;
  /** `undefined`/`null` when deleted. */
  value: T | null;
  deleted: boolean;
  /** The key's revision (0 on create, +1 per write); -1 when unknown (a delete seen in a snapshot). */
  revision: number;
  created: number;
  updated: number;
  /** An optimistic write of this client the server has not answered yet (`optimistic: true`);
   * its revision is -1. */
  pending: boolean;
}

export interface Item<T = unknown> {
  key: string;
  value: T;
  revision: number;
  created: number;
  updated: number;
}

/** One item of a glob read with `get` (ooo's list: no revision per item). */
export interface ListItem<T = unknown> {
  key: string;
  value: T;
  created: number;
  /** 0 when never updated since created. */
  updated: number;
}

/** What a subscriber gets: the current value first (`initial`), then after every change. */
export interface Update<T = unknown> {
  /** The subscription's pattern (`books/*`, `a/`, `key`). */
  path: string;
  /** A key: its value (`null` when absent). A glob or subtree: its items, newest first. */
  value: T | null | Item<T>[];
  /** The keys that changed, in order (on the initial update: every key present). */
  changes: Change<T>[];
  initial: boolean;
  /** The subscription's version (hex), what a reconnect resumes from. */
  version: string;
  /** The value is a cache kept from before a reload (`persist`) that the server has not
   * confirmed yet; the update that confirms it (even with no changes) has `cached: false`. */
  cached: boolean;
}

export interface WriteResult {
  key: string;
  revision: number;
  etag?: string;
  index?: string;
  value?: unknown;
  deleted?: number;
}

export type UpdateResult =
  | { ok: true; key: string; revision: number; etag: string }
  | { ok: false; conflict: true; key: string; code: string; detail: string };

export interface StatelineError extends Error {
  code: string;
  status: number;
  conflict: boolean;
}

export interface Unsubscribe {
  (): void;
  unsubscribe(): void;
}

export interface Subscription<T = unknown> extends AsyncIterableIterator<Update<T>> {
  unsubscribe(): void;
}

/** One compare of a transaction: the key is at `revision`, is absent, or exists. */
export type TxCompare =
  | { key: string; revision: number }
  | { key: string; absent: true }
  | { key: string; exists: true };

/** One write of a transaction: a `/_ws` write message without `id`. */
export type TxWrite =
  | { op: "set"; key: string; value: unknown; ttl?: number }
  | { op: "push"; path: string; value: unknown; ttl?: number }
  | { op: "patch"; key: string; value: unknown; type?: "merge" | "merge-patch" | "json-patch" }
  | { op: "del"; key: string }
  | { op: "incr"; key: string; by?: number };

export interface Transaction {
  if?: TxCompare[];
  then: TxWrite[];
}

/** What the server answers a transaction that applied: one result per write, in order (as a
 * write's own reply: `{ key, revision, etag }`, `{ deleted }`, ...). */
export interface TxResult {
  ok: true;
  version: string | number;
  results: Array<Record<string, unknown>>;
}

/** `db.transaction()`: the same transaction built step by step. */
export interface TransactionBuilder {
  ifRevision(key: string, revision: number): TransactionBuilder;
  ifAbsent(key: string): TransactionBuilder;
  ifExists(key: string): TransactionBuilder;
  set(key: string, value: unknown, opts?: { ttl?: number }): TransactionBuilder;
  push(path: string, value: unknown, opts?: { ttl?: number }): TransactionBuilder;
  patch(key: string, value: unknown, opts?: { type?: "merge" | "merge-patch" | "json-patch" }): TransactionBuilder;
  delete(key: string): TransactionBuilder;
  incr(key: string, by?: number): TransactionBuilder;
  toJSON(): Transaction;
  commit(): Promise<TxResult>;
}

/** One version of a key (`history`), newest first. */
export interface Version<T = unknown> {
  revision: number;
  /** When it was written (the server's clock, as `updated` elsewhere). */
  updated: number;
  /** `null` for a delete. */
  value: T | null;
  deleted: boolean;
}

/** `db.onDisconnect(key)`: writes the server makes when this connection ends (Firebase's names).
 * Registrations are made again after every reconnect. Each resolves once registered, with
 * `{ onclose: handle }` (`cancelled: true` when cancelled before the server acknowledged it). */
export interface OnDisconnect {
  set(value: unknown): Promise<{ onclose: number; cancelled?: boolean }>;
  /** A patch (`type` as for `patch`; default `merge`). */
  update(patch: unknown, opts?: { type?: "merge" | "merge-patch" | "json-patch" }): Promise<{ onclose: number; cancelled?: boolean }>;
  remove(): Promise<{ onclose: number; cancelled?: boolean }>;
  /** Cancels every disconnect write registered for this key through this client. */
  cancel(): Promise<void>;
}

export interface Member<T = unknown> {
  /** The member's connection id (the last segment of its key). */
  id: string;
  /** `presence/<room>/<id>`. */
  key: string;
  value: T;
  /** This client. */
  self: boolean;
  /** When it joined (the key's `created`). */
  joined: number;
}

/** `db.presence(room, value)`. */
export interface Presence<T = unknown> {
  readonly room: string;
  /** This connection's id: the member key is `presence/<room>/<id>`. */
  readonly id: string;
  readonly key: string;
  /** The room's members, in join order (empty until the first update). */
  readonly members: Member<T>[];
  /** Resolves when joined (the leased write acknowledged); `null` when only watching. */
  readonly joined: Promise<WriteResult | null>;
  /** `change`: the members, first when known, then whenever one joins, leaves or changes its
   * value (not on the server's lease renewals, which rewrite the same value). */
  on(type: "change", f: (members: Member<T>[]) => void): Presence<T>;
  on(type: "join" | "leave", f: (member: Member<T>) => void): Presence<T>;
  off(type: "change" | "join" | "leave", f: (...args: any[]) => void): Presence<T>;
  /** Sets this member's value (joins when only watching). */
  update(value: T): Promise<WriteResult>;
  /** Leaves the room (deletes the key), still watching. */
  leave(): Promise<void>;
  /** Leaves and stops watching. */
  close(): Promise<void>;
}

export interface Client {
  readonly base: string;
  readonly state: State;
  /** Resolves once the wasm module is loaded and the client started. */
  readonly ready: Promise<Client>;
  /** A glob (`todos/*`) or a subtree (`todos/`, every key below it at any depth): its items,
   * newest first (`[]` when none). A list carries no revisions: to compare-and-swap an item,
   * `get` it by name or subscribe. */
  get<T = unknown>(pattern: `${string}*` | `${string}/`): Promise<ListItem<T>[]>;
  /** A key (a glob is a pattern, above): its value and revision, or `null` when absent. */
  get<T = unknown>(key: string): Promise<{ key: string; value: T; revision: number; created: number; updated: number } | null>;
  set(key: string, value: unknown, opts?: { ttl?: number }): Promise<WriteResult>;
  /** Adds under `prefix/*` with a new time-ordered key. */
  push(path: string, value: unknown, opts?: { ttl?: number }): Promise<WriteResult>;
  /** `type`: `merge` (ooo deep merge, default), `merge-patch` (RFC 7396), `json-patch` (RFC 6902). */
  patch(key: string, value: unknown, opts?: { type?: "merge" | "merge-patch" | "json-patch" }): Promise<WriteResult>;
  delete(key: string): Promise<WriteResult>;
  incr(key: string, by?: number): Promise<WriteResult>;
  /** Compare-and-swap: `revision` is the revision you read (from `get` or a subscription); the
   * write applies only if the key is still at that revision. `null` (or -1, as for an absent key)
   * creates only if the key is absent. A mismatch resolves `{ ok: false, conflict: true }`.
   * (`AtomKV.update` keeps AtomKV's convention instead: the revision the key will have.) */
  update(key: string, value: unknown, revision: number | null): Promise<UpdateResult>;
  subscribe<T = unknown>(path: string, callback: (update: Update<T>) => void): Unsubscribe;
  subscribe<T = unknown>(path: string): Subscription<T>;
  on(type: "state", f: (state: State) => void): Client;
  on(type: "conflict", f: (c: { key: string; error: { code: string; detail: string; status: number } }) => void): Client;
  on(type: "error", f: (e: Error) => void): Client;
  off(type: "state" | "conflict" | "error", f: (...args: any[]) => void): Client;
  /** Applies every write of `then` if every compare of `if` holds, else none (`POST /_tx`).
   * Rejects with a `StatelineError` of code `precondition-failed` (status 409; `body` is the
   * server's problem document, naming the compare that failed) when one does not hold. Not
   * queued while offline: it rejects. */
  transaction(tx: Transaction): Promise<TxResult>;
  transaction(): TransactionBuilder;
  /** The key's last `n` versions (default 10), newest first (`GET /<key>?history=n`); `[]` when
   * none. Rejects with code `unsupported` on a server that keeps no history. */
  history<T = unknown>(key: string, n?: number): Promise<Version<T>[]>;
  /** Writes the server makes when this connection ends (Firebase's `onDisconnect`). */
  onDisconnect(key: string): OnDisconnect;
  /** Joins `room` with `value` as `presence/<room>/<connection id>`, a key leased to this
   * connection (deleted when it ends, taken again after a reconnect), and watches its members.
   * Without `value`: watches only. `room` is one key segment. */
  presence<T = unknown>(room: string, value?: T): Presence<T>;
  /** This connection's random id (set by the first `presence`). */
  readonly id?: string;
  /** Writes waiting for the connection. */
  queued(): number;
  close(): Promise<void>;
}

export interface StatelineStatic {
  /** The client for `baseUrl` (`http(s)://host:port`): one multiplexed /_ws connection per server. */
  connect(baseUrl: string, opts?: ConnectOptions): Client;
}

/** AtomKV's hosted API (skeeto/atomkv), lossless. */
export interface AtomKVStatic {
  BASE: string | undefined;
  get<T = unknown>(key: string): Promise<[T | null, number]>;
  set(key: string, value: unknown): Promise<void>;
  /** AtomKV's convention: `revision` is the revision the key will have, the one read + 1 (0
   * creates). Resolves `false` on a conflict. */
  update(key: string, value: unknown, revision: number): Promise<boolean>;
  subscribe<T = unknown>(keypath: string): AsyncGenerator<[string, T | null, number]>;
}

export declare const Stateline: StatelineStatic;
export declare const connect: StatelineStatic["connect"];
export declare function makeAtomKV(base: string): AtomKVStatic;
export default Stateline;
