//! WebSocket compression: negotiating `permessage-deflate` (RFC 7692) in the handshake.
//!
//! The adapter asks [`permessage_deflate`] when compression is switched on; it answers with the
//! terms both sides then keep ([`Deflate`]), including the `Sec-WebSocket-Extensions` value the
//! 101 response carries, or `None` (the connection goes on uncompressed). The compressing itself
//! is byte work and stays in the adapter.
//!
//! The terms Stateline accepts:
//! - The server always uses no context takeover (`server_no_context_takeover`, which a server
//!   may add on its own): every message it sends is compressed from a fresh state, so a message's
//!   compressed bytes depend on the message alone and a connection keeps no compressor between
//!   messages (an idle subscriber costs the same as without compression).
//! - The server's window is the full 32 KiB: an offer that asks for a smaller
//!   `server_max_window_bits` is declined (the compressor cannot bound its window), and the next
//!   offer is tried.
//! - The client's context takeover is the client's choice: `client_no_context_takeover` is
//!   echoed when offered; otherwise the server keeps one inflate state for that connection once
//!   the client sends its first compressed message. `client_max_window_bits` is left out of the
//!   response, so the client keeps its default of 15 (the inflater accepts any window).
//! - An offer with an unknown, repeated or malformed parameter is declined (RFC 7692, 7.1).

use http::header::{self, HeaderMap, HeaderValue};

/// The compression terms agreed in a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deflate {
    /// The client compresses each message from a fresh state, so the server keeps no inflate
    /// state between its messages.
    pub client_no_context_takeover: bool,
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub response: HeaderValue,
}

/// The agreed terms when the handshake's `Sec-WebSocket-Extensions` offers `permessage-deflate`
/// in a form Stateline accepts (the first such offer wins, as the client listed them in order
/// of preference), or `None`.
pub fn permessage_deflate(headers: &HeaderMap) -> Option<Deflate> {
    headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_offers)
        .find_map(accept)
}

/// Splits a header value into extension offers at commas outside quoted strings.
fn split_offers(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

fn accept(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let (mut client_nct, mut server_nct, mut server_bits, mut client_bits) =
        (false, false, false, false);
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (p, None),
        };
        let seen = match name.to_ascii_lowercase().as_str() {
            "client_no_context_takeover" if value.is_none() => &mut client_nct,
            "server_no_context_takeover" if value.is_none() => &mut server_nct,
            "server_max_window_bits" => {
                // Only the full window: the compressor cannot keep to a smaller one.
                if window_bits(value?)? != 15 {
                    return None;
                }
                &mut server_bits
            }
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                &mut client_bits
            }
            _ => return None,
        };
        if std::mem::replace(seen, true) {
            return None;
        }
    }
    let response = HeaderValue::from_static(match (client_nct, server_bits) {
        (false, false) => "permessage-deflate; server_no_context_takeover",
        (true, false) => {
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        }
        (false, true) => {
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=15"
        }
        (true, true) => {
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=15"
        }
    });
    Some(Deflate {
        client_no_context_takeover: client_nct,
        response,
    })
}

/// A parameter value: a token or a quoted string (RFC 7692, 7.1).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// A window size parameter: 8 to 15, digits only (RFC 7692, 7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<Deflate> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::SEC_WEBSOCKET_EXTENSIONS, v.parse().unwrap());
        }
        permessage_deflate(&h)
    }

    #[test]
    fn browsers_offers_are_accepted() {
        // Chromium's and Firefox's offer.
        let d = offer(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert!(!d.client_no_context_takeover);
        assert_eq!(d.response, "permessage-deflate; server_no_context_takeover");
        // The `ws` package's default offer, and one with every parameter.
        assert!(offer(&["permessage-deflate; client_max_window_bits=15"]).is_some());
        let d = offer(&[
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=15; client_max_window_bits=\"10\"",
        ])
        .unwrap();
        assert!(d.client_no_context_takeover);
        assert_eq!(
            d.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=15"
        );
    }

    #[test]
    fn no_offer_or_another_extension_gets_none() {
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(offer(&[""]), None);
    }

    #[test]
    fn a_declined_offer_falls_back_to_the_next() {
        // A smaller server window cannot be kept; the second offer can.
        let d = offer(&["permessage-deflate; server_max_window_bits=10, permessage-deflate"]);
        assert_eq!(
            d.unwrap().response,
            "permessage-deflate; server_no_context_takeover"
        );
        // Across header lines too.
        let d = offer(&[
            "permessage-deflate; server_max_window_bits=9",
            "permessage-deflate; client_no_context_takeover",
        ]);
        assert!(d.unwrap().client_no_context_takeover);
    }

    #[test]
    fn malformed_offers_are_declined() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=\"9",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown",
            "permessage-deflate; server_max_window_bits=15; server_max_window_bits=15",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
        }
    }

    #[test]
    fn names_are_case_insensitive_and_commas_in_quotes_do_not_split() {
        let d = offer(&["Permessage-Deflate; Client_No_Context_Takeover"]).unwrap();
        assert!(d.client_no_context_takeover);
        // A quoted comma keeps the (then malformed) offer whole instead of making two.
        assert_eq!(
            offer(&["permessage-deflate; client_max_window_bits=\"1,permessage-deflate\""]),
            None
        );
    }
}
