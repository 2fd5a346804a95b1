//! The Durable Object's storage: its SQLite database, in the core's record layout.
//!
//! Tables: `entries(key, rec)`, `log(seq, rec)`, `history(seq, rec)` (the key history,
//! `stateline_core::history`'s layout, written from the engine's delta with every commit),
//! `receipts(seq, rec)` (the receipts of idempotent writes, `stateline_core::receipts`'s
//! layout, likewise) and `meta(name, value)`. Sequence numbers and
//! nanosecond timestamps do not fit a JavaScript number, so records are blobs in the core's byte
//! layout (`stateline_core::codec`, the same as the native server's redb file) and sequence
//! numbers are 16-digit hex text, which sorts in numeric order.
//!
//! A commit is one `transactionSync`: all of a write's changes land, or none do. The runtime's
//! output gate holds every response and WebSocket message sent after it until the write is
//! durable, and resets the object if it fails: nothing is acknowledged before it is stored.

use stateline_core::codec::{decode_entry, decode_log, encode_entry, encode_log};
use stateline_core::history::{Delta, History, Limits};
use stateline_core::log::Log;
use stateline_core::store::{Change, Key, Store};
use stateline_core::Config;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::{SqlStorage, SqlStorageValue, Storage};

fn hex(seq: u64) -> String {
    format!("{seq:016x}")
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Creates the tables if they are missing.
pub fn init(sql: &SqlStorage) -> Result<(), String> {
    for stmt in [
        "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, rec BLOB NOT NULL)",
        "CREATE TABLE IF NOT EXISTS log (seq TEXT PRIMARY KEY, rec BLOB NOT NULL)",
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS history (seq TEXT PRIMARY KEY, rec BLOB NOT NULL)",
        "CREATE TABLE IF NOT EXISTS receipts (seq TEXT PRIMARY KEY, rec BLOB NOT NULL)",
        "CREATE TABLE IF NOT EXISTS namespaces (name TEXT PRIMARY KEY)",
    ] {
        sql.exec(stmt, None).map_err(err)?;
    }
    Ok(())
}

fn blob(v: Option<&SqlStorageValue>) -> Result<&[u8], String> {
    match v {
        Some(SqlStorageValue::Blob(b)) => Ok(b),
        other => Err(format!("expected a blob, found {other:?}")),
    }
}

fn string(v: Option<&SqlStorageValue>) -> Result<&str, String> {
    match v {
        Some(SqlStorageValue::String(s)) => Ok(s),
        other => Err(format!("expected text, found {other:?}")),
    }
}

/// A meta value, if set.
pub fn meta(sql: &SqlStorage, name: &str) -> Result<Option<String>, String> {
    let cur = sql
        .exec("SELECT value FROM meta WHERE name = ?", vec![name.into()])
        .map_err(err)?;
    let row = cur.raw().next();
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(string(r.map_err(err)?.first())?.to_string())),
    }
}

/// Sets a meta value.
pub fn set_meta(sql: &SqlStorage, name: &str, value: &str) -> Result<(), String> {
    sql.exec(
        "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
        vec![name.into(), value.into()],
    )
    .map_err(err)?;
    Ok(())
}

/// Loads the store and the change log, so versions clients hold stay valid across eviction.
pub fn load(sql: &SqlStorage, config: &Config) -> Result<(Store, Log), String> {
    let last_seq = match meta(sql, "last_seq")? {
        Some(s) => u64::from_str_radix(&s, 16).map_err(err)?,
        None => 0,
    };
    let mut entries = Vec::new();
    for row in sql
        .exec("SELECT key, rec FROM entries", None)
        .map_err(err)?
        .raw()
    {
        let row = row.map_err(err)?;
        let key = string(row.first())?;
        let e = decode_entry(blob(row.get(1))?).map_err(err)?;
        entries.push((Key::from(key), e));
    }
    let store = Store::load(last_seq, entries);
    let mut records = Vec::new();
    for row in sql
        .exec("SELECT seq, rec FROM log ORDER BY seq", None)
        .map_err(err)?
        .raw()
    {
        let row = row.map_err(err)?;
        let seq = u64::from_str_radix(string(row.first())?, 16).map_err(err)?;
        records.push(decode_log(seq, blob(row.get(1))?).map_err(err)?);
    }
    // Every version from the one before the first kept record is covered.
    let floor = records.first().map_or(store.last_seq(), |r| r.0 - 1);
    Ok((
        store,
        Log::restore(floor, records, config.log_entries, config.log_bytes),
    ))
}

/// Loads the key history kept with the store, trimmed to `limits` (what was trimmed is in the
/// history's delta, removed by the next commit).
pub fn load_history(sql: &SqlStorage, limits: Limits) -> Result<History, String> {
    History::restore(limits, rows(sql, "history")?).map_err(|c| c.0)
}

/// Loads the receipts of idempotent writes kept with the store, trimmed to `limits`.
pub fn load_receipts(
    sql: &SqlStorage,
    limits: stateline_core::receipts::Limits,
) -> Result<stateline_core::receipts::Receipts, String> {
    stateline_core::receipts::Receipts::restore(limits, rows(sql, "receipts")?).map_err(|c| c.0)
}

// Every `(seq, rec)` row of a table keyed by sequence number.
fn rows(sql: &SqlStorage, table: &str) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut rows = Vec::new();
    for row in sql
        .exec(&format!("SELECT seq, rec FROM {table}"), None)
        .map_err(err)?
        .raw()
    {
        let row = row.map_err(err)?;
        let seq = u64::from_str_radix(string(row.first())?, 16).map_err(err)?;
        rows.push((seq, blob(row.get(1))?.to_vec()));
    }
    Ok(rows)
}

// Writes a delta of a table keyed by sequence number (`history`, `receipts`).
fn write_rows(sql: &SqlStorage, table: &str, d: &Delta) -> Result<(), String> {
    for (seq, rec) in &d.put {
        sql.exec(
            &format!("INSERT OR REPLACE INTO {table} (seq, rec) VALUES (?, ?)"),
            vec![hex(*seq).into(), rec.clone().into()],
        )
        .map_err(err)?;
    }
    for seq in &d.drop {
        sql.exec(
            &format!("DELETE FROM {table} WHERE seq = ?"),
            vec![hex(*seq).into()],
        )
        .map_err(err)?;
    }
    Ok(())
}

fn write(sql: &SqlStorage, changes: &[Change], log_keep: usize) -> Result<(), String> {
    let mut buf = Vec::new();
    for c in changes {
        match &c.entry {
            Some(e) => {
                buf.clear();
                encode_entry(&mut buf, e);
                sql.exec(
                    "INSERT OR REPLACE INTO entries (key, rec) VALUES (?, ?)",
                    vec![(*c.key).into(), buf.clone().into()],
                )
                .map_err(err)?;
            }
            None => {
                sql.exec("DELETE FROM entries WHERE key = ?", vec![(*c.key).into()])
                    .map_err(err)?;
            }
        }
        sql.exec(
            "INSERT OR REPLACE INTO log (seq, rec) VALUES (?, ?)",
            vec![hex(c.seq).into(), encode_log(c).into()],
        )
        .map_err(err)?;
    }
    if let Some(last) = changes.last() {
        set_meta(sql, "last_seq", &hex(last.seq))?;
        // The log table stays bounded, as in memory: the oldest records go first.
        let keep_from = last.seq.saturating_sub(log_keep as u64);
        sql.exec(
            "DELETE FROM log WHERE seq <= ?",
            vec![hex(keep_from).into()],
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Writes a batch of changes, the key history's delta and the receipts' delta, in one
/// transaction: all of them, or nothing.
pub fn commit(
    storage: &Storage,
    changes: &[Change],
    history: Delta,
    receipts: Delta,
    log_keep: usize,
) -> Result<(), String> {
    if changes.is_empty() && history.is_empty() && receipts.is_empty() {
        return Ok(());
    }
    // `transactionSync` runs the callback at once and rolls back if it throws. The callback must
    // be 'static for wasm-bindgen, so it owns what it writes (entries are shared, not copied).
    let failure = std::rc::Rc::new(std::cell::RefCell::new(None::<String>));
    let (sql, batch, seen) = (storage.sql(), changes.to_vec(), failure.clone());
    let cb = Closure::once(move || -> Result<JsValue, JsValue> {
        write_rows(&sql, "history", &history)
            .and_then(|()| write_rows(&sql, "receipts", &receipts))
            .and_then(|()| write(&sql, &batch, log_keep))
            .map_err(|e| {
                *seen.borrow_mut() = Some(e.clone());
                JsValue::from_str(&e)
            })?;
        Ok(JsValue::UNDEFINED)
    });
    let raw: &JsValue = storage.as_raw().as_ref();
    let tx = js_sys::Reflect::get(raw, &JsValue::from_str("transactionSync"))
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or("this runtime has no storage.transactionSync (the Durable Object must be SQLite-backed: new_sqlite_classes in wrangler.toml)")?;
    let r = tx.call1(raw, cb.as_ref().unchecked_ref());
    drop(cb);
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(failure
            .borrow_mut()
            .take()
            .unwrap_or_else(|| format!("transaction failed: {e:?}"))),
    }
}

/// Registry: remembers a namespace in use.
pub fn add_namespace(sql: &SqlStorage, name: &str) -> Result<(), String> {
    init(sql)?;
    sql.exec(
        "INSERT OR IGNORE INTO namespaces (name) VALUES (?)",
        vec![name.into()],
    )
    .map_err(err)?;
    Ok(())
}

/// Registry: every namespace in use, sorted.
pub fn namespaces(sql: &SqlStorage) -> Result<Vec<String>, String> {
    init(sql)?;
    let mut out = Vec::new();
    for row in sql
        .exec("SELECT name FROM namespaces ORDER BY name", None)
        .map_err(err)?
        .raw()
    {
        out.push(string(row.map_err(err)?.first())?.to_string());
    }
    Ok(out)
}
