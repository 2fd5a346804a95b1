//! Embeds what `npm run build:client` and `npm run build:ui` produced (wasm-client/dist and
//! www/dist), each file with an entity tag and (feature `gzip`) its gzipped copy. A plain `cargo build` on a fresh clone
//! must still work without Node or the wasm tools: a missing file is embedded as absent, and the
//! server answers it with 503 saying how to build it.

use std::fmt::Write as _;
use std::path::Path;

// (URL path, file relative to the workspace root, content type)
const FILES: &[(&str, &str, &str)] = &[
    (
        "/_client.js",
        "wasm-client/dist/stateline.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "/_ui/index.html",
        "www/dist/index.html",
        "text/html; charset=utf-8",
    ),
    (
        "/_ui/app.js",
        "www/dist/app.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "/_ui/app.css",
        "www/dist/app.css",
        "text/css; charset=utf-8",
    ),
];

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The gzipped copy of `bytes` (empty without the `gzip` feature: nothing is sent gzipped).
#[cfg(feature = "gzip")]
fn gzipped(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).expect("in memory");
    gz.finish().expect("in memory")
}

#[cfg(not(feature = "gzip"))]
fn gzipped(_: &[u8]) -> Vec<u8> {
    Vec::new()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut code = String::from("pub const FILES: &[Embedded] = &[\n");
    for (i, (url, file, ctype)) in FILES.iter().enumerate() {
        let path = root.join(file);
        // Watching the dist folders catches a file appearing, changing or going.
        println!(
            "cargo:rerun-if-changed={}",
            path.parent().expect("in a folder").display()
        );
        match std::fs::read(&path) {
            Ok(bytes) => {
                let gz = gzipped(&bytes);
                let plain = out.join(format!("asset{i}"));
                let zipped = out.join(format!("asset{i}.gz"));
                std::fs::write(&plain, &bytes).expect("OUT_DIR is writable");
                std::fs::write(&zipped, &gz).expect("OUT_DIR is writable");
                let _ = writeln!(
                    code,
                    "    Embedded {{ path: {url:?}, source: {file:?}, content_type: {ctype:?}, body: Some(include_bytes!({plain:?})), gzip: include_bytes!({zipped:?}), etag: \"\\\"{:016x}\\\"\" }},",
                    fnv1a(&bytes)
                );
            }
            Err(_) => {
                let _ = writeln!(
                    code,
                    "    Embedded {{ path: {url:?}, source: {file:?}, content_type: {ctype:?}, body: None, gzip: &[], etag: \"\" }},"
                );
            }
        }
    }
    code.push_str("];\n");
    std::fs::write(out.join("embedded.rs"), code).expect("OUT_DIR is writable");
}
