//! containerd's filter syntax, for `Walk` (containerd's `filters` package):
//! a filter is selectors joined by `,`, all of which must match; a list of
//! filters matches when any one does. A selector is a field path, and
//! optionally an operator (`==`, `!=`, `~=` for a regular expression) and a
//! value. Field path components are separated by `.`; a component or a
//! value may be quoted (`labels."containerd.io/gc.root"`, `name=="a,b"`).
//!
//! The fields of a snapshot: `kind`, `name`, `parent`, `labels.<key>`.

use crate::error::{Error, Result};

/// A parsed filter list: matches when any of its filters does.
#[derive(Debug, Clone)]
pub struct Filters(Vec<Vec<Selector>>);

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Option<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Re(regex::Regex),
}

fn bad(filter: &str, reason: impl std::fmt::Display) -> Error {
    Error::invalid("filter", format!("'{filter}': {reason}"))
}

impl Filters {
    /// Parses `filters` (none: everything matches).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the filter and what is wrong.
    pub fn parse(filters: &[String]) -> Result<Filters> {
        let mut out = vec![];
        for f in filters.iter().filter(|f| !f.trim().is_empty()) {
            out.push(parse_one(f)?);
        }
        Ok(Filters(out))
    }

    /// Whether a snapshot whose field `path` has value `get(path)` matches.
    /// `get` returns `None` for a field it does not have.
    pub fn matches(&self, get: impl Fn(&[String]) -> Option<String>) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|sels| {
                sels.iter().all(|s| {
                    // As containerd's selectors: presence for `==` and a
                    // bare path; `!=` and `~=` compare the value, "" when
                    // the field is absent.
                    let v = get(&s.path);
                    match &s.op {
                        None => v.is_some(),
                        Some(Op::Eq(want)) => v.as_ref() == Some(want),
                        Some(Op::Ne(want)) => v.unwrap_or_default() != *want,
                        Some(Op::Re(re)) => re.is_match(&v.unwrap_or_default()),
                    }
                })
            })
    }
}

/// One filter: selectors separated by `,` (outside quotes).
fn parse_one(f: &str) -> Result<Vec<Selector>> {
    let mut sels = vec![];
    let mut rest = f.trim();
    loop {
        let (sel, after) = parse_selector(f, rest)?;
        sels.push(sel);
        rest = after.trim_start();
        if rest.is_empty() {
            return Ok(sels);
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| bad(f, format!("expected ',' before '{rest}'")))?
            .trim_start();
    }
}

/// A component or value: quoted (`"..."` with `\` escapes) or bare (up to
/// an operator, `.`, `,` or the end).
fn token<'a>(f: &str, s: &'a str, stop: &[char]) -> Result<(String, &'a str)> {
    if let Some(q) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((out, &q[i + 1..])),
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err(bad(f, "unterminated quote"));
    }
    let end = s
        .find(|c: char| stop.contains(&c) || c.is_whitespace())
        .unwrap_or(s.len());
    Ok((s[..end].to_string(), &s[end..]))
}

fn parse_selector<'a>(f: &str, s: &'a str) -> Result<(Selector, &'a str)> {
    let mut path = vec![];
    let mut rest = s;
    loop {
        let (c, after) = token(f, rest, &['.', ',', '=', '!', '~'])?;
        if c.is_empty() {
            return Err(bad(f, "a field name is missing"));
        }
        path.push(c);
        rest = after;
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    rest = rest.trim_start();
    let Some((op, r)) = ["==", "!=", "~="]
        .into_iter()
        .find_map(|op| rest.strip_prefix(op).map(|r| (op, r)))
    else {
        return Ok((Selector { path, op: None }, rest));
    };
    let (value, after) = token(f, r.trim_start(), &[','])?;
    let op = match op {
        "==" => Op::Eq(value),
        "!=" => Op::Ne(value),
        _ => Op::Re(
            regex::Regex::new(&value)
                .map_err(|_| bad(f, format!("'{value}' is not a regular expression")))?,
        ),
    };
    Ok((Selector { path, op: Some(op) }, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &[String]) -> Option<String> {
        match path {
            [k] if k == "kind" => Some("committed".into()),
            [k] if k == "name" => Some("a,b".into()),
            [l, k] if l == "labels" && k == "containerd.io/gc.root" => Some("x".into()),
            [l, k] if l == "labels" && k == "team" => Some("storage".into()),
            _ => None,
        }
    }

    fn m(fs: &[&str]) -> bool {
        let fs: Vec<String> = fs.iter().map(|s| s.to_string()).collect();
        Filters::parse(&fs).unwrap().matches(get)
    }

    #[test]
    fn plain_filters_follow_containerd_s_syntax() {
        assert!(m(&[]));
        assert!(m(&["kind==committed"]));
        assert!(!m(&["kind==active"]));
        assert!(m(&["kind==active", "kind==committed"]), "filters are ORed");
        assert!(
            !m(&["kind==committed,labels.team==other"]),
            "selectors ANDed"
        );
        assert!(m(&[r#"labels."containerd.io/gc.root""#]), "presence");
        assert!(!m(&["labels.missing"]));
        assert!(m(&[r#"labels."containerd.io/gc.root"==x"#]));
        assert!(m(&[r#"name=="a,b""#]), "quoted value with a comma");
        assert!(m(&["labels.team~=^stor"]));
        assert!(m(&["labels.missing!=x"]));
        assert!(!m(&["labels.missing!=\"\""]), "an absent field is \"\"");
        assert!(m(&["labels.missing~=^$"]));
        assert!(m(&["kind == committed , labels.team == storage"]));
        for bad in ["==x", "kind==\"open", "labels.team~=(", "kind==a b"] {
            let e = Filters::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.to_string().contains("invalid filter"), "{bad}: {e}");
        }
    }
}
