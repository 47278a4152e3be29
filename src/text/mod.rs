//! Text for messages: a room below every other (it imports none), since
//! the errors of every room use it. `prop` (tests only) is the one way the
//! property tests of hostile bytes run.

use std::borrow::Cow;

/// `text` with its control characters escaped as Rust escapes them (a
/// newline as `\n`, a NUL as `\0`, others as `\u{7f}`), so that a message
/// that carries it stays on one line and cannot rewrite the terminal.
///
/// For text a message does not quote with `{:?}` itself: paths and names
/// taken from an archive or a document, and other crates' error text (the
/// `tar` crate's errors name a member by its raw bytes). Text without
/// control characters is returned as it is.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.contains(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_escape_controls_keeps_one_line() {
        assert_eq!(escape_controls("plain é/x"), "plain é/x");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\nb\r\t\0\u{7f}"), "a\\nb\\r\\t\\0\\u{7f}");
        // Backslashes and quotes are not control characters: left alone.
        assert_eq!(escape_controls("a\\n\"b\""), "a\\n\"b\"");
    }
}

#[cfg(test)]
pub(crate) mod prop;
