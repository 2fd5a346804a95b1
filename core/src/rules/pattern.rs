//! Rule patterns: parsing, matching with `{claim}` captures, specificity and overlaps.

use crate::key::{KeyError, Pattern, Segment};

/// Why a rule pattern could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulePatternError {
    /// Nothing but spaces and slashes.
    #[error("empty pattern (use ** for every key)")]
    Empty,
    /// `**` before the last segment.
    #[error("** may only be the last segment")]
    RestNotLast,
    /// A `{claim}` whose name is not ASCII letters, digits and `_`.
    #[error("bad claim name {0:?} in {{...}}")]
    ClaimName(String),
    /// A literal segment that cannot be part of a key.
    #[error("segment {segment:?}: {error}")]
    Segment {
        /// The segment.
        segment: String,
        /// Why.
        error: KeyError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    Any,
    Capture(Box<str>),
    // `**`: this position and everything below it (zero or more segments); last only.
    Rest,
}

impl Seg {
    // Specificity at one position; `END` marks a pattern that stops here (beats `**`).
    fn rank(&self) -> u8 {
        match self {
            Seg::Lit(_) => 3,
            Seg::Any | Seg::Capture(_) => 2,
            Seg::Rest => 1,
        }
    }
    fn wild(&self) -> bool {
        !matches!(self, Seg::Lit(_))
    }
}

const END: u8 = 4;

/// A rule's pattern: literal segments, `*` (any one segment), `{claim}` (any one segment, named
/// so a grant can compare it with a token claim) and a final `**` (everything below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePattern {
    pub(super) text: String,
    segs: Vec<Seg>,
}

impl RulePattern {
    /// Parses a rule pattern.
    pub fn parse(s: &str) -> Result<RulePattern, RulePatternError> {
        let s = s.trim().trim_start_matches('/');
        if s.is_empty() {
            return Err(RulePatternError::Empty);
        }
        let parts: Vec<&str> = s.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "**" if i + 1 == parts.len() => Seg::Rest,
                "**" => return Err(RulePatternError::RestNotLast),
                "*" => Seg::Any,
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(RulePatternError::ClaimName(name.into()));
                    }
                    Seg::Capture(name.into())
                }
                p => {
                    crate::key::validate_key(p).map_err(|error| RulePatternError::Segment {
                        segment: p.into(),
                        error,
                    })?;
                    Seg::Lit((*p).into())
                }
            };
            segs.push(seg);
        }
        Ok(RulePattern {
            text: s.to_string(),
            segs,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn rest_at(&self) -> Option<usize> {
        (self.segs.last() == Some(&Seg::Rest)).then(|| self.segs.len() - 1)
    }

    /// Whether `key` matches, with the `{claim}` captures.
    pub(super) fn captures<'k>(&self, key: &'k str) -> Option<Vec<(&str, &'k str)>> {
        let mut caps = Vec::new();
        let mut parts = key.split('/');
        for seg in &self.segs {
            match seg {
                Seg::Rest => return Some(caps),
                _ => {
                    let p = parts.next()?;
                    match seg {
                        Seg::Lit(l) if &**l != p => return None,
                        Seg::Capture(n) => caps.push((&**n, p)),
                        _ => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(caps)
    }

    /// Whether a key matches.
    pub fn matches(&self, key: &str) -> bool {
        self.captures(key).is_some()
    }

    pub(super) fn rank(&self) -> Vec<u8> {
        let mut r: Vec<u8> = self.segs.iter().map(Seg::rank).collect();
        if self.rest_at().is_none() {
            r.push(END);
        }
        r
    }

    pub(super) fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            Seg::Capture(n) => Some(&**n),
            _ => None,
        })
    }

    /// Whether some key matched by `p` (a key, glob or subtree) may also match this pattern.
    /// Errs on the side of `true`: it decides which rules shape a subscription's audience.
    pub fn overlaps(&self, p: &Pattern) -> bool {
        let compatible = |r: &Seg, lit: Option<&str>| match (r, lit) {
            (Seg::Lit(a), Some(b)) => &**a == b,
            _ => true,
        };
        let rest = self.rest_at();
        let fixed = &self.segs[..rest.unwrap_or(self.segs.len())];
        match p {
            Pattern::Key(k) => self.matches(k),
            Pattern::Glob(_, gs) => {
                let n = gs.len();
                let len_ok = match rest {
                    Some(j) => n >= j,
                    None => n == fixed.len(),
                };
                len_ok
                    && fixed.iter().zip(gs).all(|(r, g)| match g {
                        Segment::Lit(l) => compatible(r, Some(l)),
                        Segment::Star => true,
                    })
            }
            Pattern::Subtree(prefix) => {
                let ps: Vec<&str> = if prefix.is_empty() {
                    Vec::new()
                } else {
                    prefix.split('/').collect()
                };
                let len_ok = rest.is_some() || fixed.len() > ps.len();
                len_ok && fixed.iter().zip(&ps).all(|(r, l)| compatible(r, Some(l)))
            }
        }
    }

    // The glob the core's limit filter understands (`{claim}` → `*`); `**` has none.
    pub(super) fn as_glob(&self) -> Option<String> {
        let mut out = Vec::new();
        for s in &self.segs {
            out.push(match s {
                Seg::Lit(l) => l.to_string(),
                Seg::Any | Seg::Capture(_) => "*".into(),
                Seg::Rest => return None,
            });
        }
        Some(out.join("/"))
    }
}

// Same specificity everywhere and the same literals: every key one matches, the other matches
// too, and neither is more specific.
pub(super) fn same_shape(a: &RulePattern, b: &RulePattern) -> bool {
    a.rank() == b.rank()
        && a.segs.iter().zip(&b.segs).all(|(x, y)| match (x, y) {
            (Seg::Lit(p), Seg::Lit(q)) => p == q,
            _ => x.wild() && y.wild(),
        })
}
