//! The workers' environment: `--env-file FILE`, `--clear-env` and
//! `--keep-env NAME`, on top of `--env K=V`.
//!
//! From the bottom up, a later layer replacing a variable of an earlier
//! one: baton's own environment as it started (only [`ALWAYS_KEPT`] and
//! the `--keep-env` names of it with `--clear-env`), then `USER`, `LOGNAME`
//! and `HOME` of the `--user`, then each `--env-file` in order, then the
//! config file's `[env]`, then `--env`. The variables baton sets itself
//! (`LISTEN_*`, `NOTIFY_SOCKET`, `BATON_*`) come last and cannot be set
//! otherwise. Env files are read at start and again at every reload; what
//! a generation got is fixed when it starts and crosses an in-place
//! upgrade with it.
//!
//! An env file has one `KEY=VALUE` per line, as systemd's
//! `EnvironmentFile=` and Docker's `--env-file` read them:
//!
//! ```text
//! # comments and blank lines are skipped
//! DATABASE_URL=postgres://db/app
//! export RUST_LOG=info            # `export ` is allowed (and ignored)
//! GREETING="hello, world"         # quotes: "..." with \" \\ \n \t \$, '...' as written
//! ```
//!
//! Hand-written rather than taken from `dotenvy`: its errors give no line
//! number, and it expands `$VARS` from baton's own environment, so the same
//! file would mean different things under different parents.

use std::ffi::OsString;
use std::path::Path;

/// What `--clear-env` keeps of baton's environment, besides `--keep-env`.
pub const ALWAYS_KEPT: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// Whether `name` can be a variable of an env file or `--keep-env`
/// (letters, digits and `_`, not starting with a digit).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a `--keep-env` pattern: a name, or a prefix ending in `*`
/// (`LC_*`).
pub fn check_keep_pattern(p: &str) -> Result<(), String> {
    let name = p.strip_suffix('*').unwrap_or(p);
    if (name.is_empty() && p == "*") || valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "--keep-env {p:?}: give a variable name (letters, digits, _), or a prefix ending in * such as LC_*"
        ))
    }
}

fn keeps(patterns: &[String], name: &[u8]) -> bool {
    ALWAYS_KEPT.iter().any(|k| k.as_bytes() == name)
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix.as_bytes()),
            None => p.as_bytes() == name,
        })
}

/// `base` (`KEY=VALUE` entries), or with `clear` only what it keeps.
pub fn base_for(base: &[OsString], clear: bool, keep: &[String]) -> Vec<OsString> {
    if !clear {
        return base.to_vec();
    }
    base.iter()
        .filter(|kv| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(kv.as_os_str());
            let name = bytes.split(|b| *b == b'=').next().unwrap_or_default();
            keeps(keep, name)
        })
        .cloned()
        .collect()
}

/// `to` with `(key, value)` set: an earlier entry of the same key goes.
pub fn set(to: &mut Vec<(String, String)>, key: &str, value: &str) {
    to.retain(|(k, _)| k != key);
    to.push((key.to_owned(), value.to_owned()));
}

/// Reads an env file.
pub fn read_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => ": create it, or fix the path",
            std::io::ErrorKind::PermissionDenied => {
                ": baton cannot read it (check its mode and owner)"
            }
            _ => "",
        };
        format!("cannot read the env file {}: {e}{hint}", path.display())
    })?;
    let text = String::from_utf8(text)
        .map_err(|e| format!("{}: the env file is not UTF-8 text ({e})", path.display()))?;
    parse(&text).map_err(|(line, col, what)| format!("{}:{line}:{col}: {what}", path.display()))
}

/// Parses an env file's text; an error is `(line, column, problem)`,
/// 1-based.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, usize, String)> {
    let mut out = Vec::new();
    // Notepad and other Windows editors start a UTF-8 file with a byte
    // order mark, which would be read as part of the first name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let indent = raw.len() - raw.trim_start().len();
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (line, indent) = match line.strip_prefix("export ") {
            Some(rest) => (
                rest.trim_start(),
                indent + (line.len() - rest.trim_start().len()),
            ),
            None => (line, indent),
        };
        let col = |at: usize| indent + at + 1;
        let Some(eq) = line.find('=') else {
            return Err((
                line_no,
                col(0),
                format!("expected KEY=VALUE, found {line:?}"),
            ));
        };
        let key = line[..eq].trim_end();
        if !valid_name(key) {
            return Err((
                line_no,
                col(0),
                format!(
                    "{key:?} is not a variable name (letters, digits and _, not starting with a digit)"
                ),
            ));
        }
        let value_at = eq + 1 + (line[eq + 1..].len() - line[eq + 1..].trim_start().len());
        let value =
            unquote(&line[value_at..]).map_err(|(at, what)| (line_no, col(value_at + at), what))?;
        set(&mut out, key, &value);
    }
    Ok(out)
}

/// The value after `=`: as written (trailing blanks dropped), or quoted.
fn unquote(v: &str) -> Result<String, (usize, String)> {
    let mut chars = v.char_indices();
    let Some((_, quote @ ('"' | '\''))) = chars.next() else {
        return Ok(v.trim_end().to_owned());
    };
    let mut out = String::new();
    let mut end = None;
    while let Some((at, c)) = chars.next() {
        if c == quote {
            end = Some(at);
            break;
        }
        if c == '\\' && quote == '"' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, e @ ('"' | '\\' | '$' | '\''))) => out.push(e),
                Some((at, other)) => {
                    return Err((
                        at,
                        format!("unknown escape \\{other} (use \\\" \\\\ \\n \\t \\$)"),
                    ));
                }
                None => break,
            }
        } else {
            out.push(c);
        }
    }
    let Some(end) = end else {
        return Err((0, format!("the {quote} is not closed on this line")));
    };
    let rest = v[end + 1..].trim_start();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return Err((
            end + 1,
            format!("unexpected {rest:?} after the closing {quote} (only a # comment may follow)"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_documented_forms() {
        let text = "# a comment\n\n; another\nA=1\n  export B = two words  \nC=\"quoted \\\"x\\\" \\$HOME\\n\" # note\nD='single $HOME \\n'\nE=\nF=x=y\nA=again\n";
        assert_eq!(
            parse(text).expect("valid"),
            kv(&[
                ("B", "two words"),
                ("C", "quoted \"x\" $HOME\n"),
                ("D", "single $HOME \\n"),
                ("E", ""),
                ("F", "x=y"),
                ("A", "again"),
            ])
        );
    }

    /// A file saved by Notepad (a byte order mark, CRLF line ends) was
    /// refused: `"\u{feff}A" is not a variable name`.
    #[test]
    fn regression_a_byte_order_mark_was_read_as_part_of_the_first_name() {
        assert_eq!(
            parse("\u{feff}A=1\r\nexport B=\"two\"\r\n"),
            Ok(kv(&[("A", "1"), ("B", "two")]))
        );
        // Only at the very start: elsewhere it is a mistake, named.
        assert!(parse("A=1\n\u{feff}B=2\n").is_err());
    }

    #[test]
    fn mistakes_name_the_line_and_column() {
        for (text, at, what) in [
            ("A=1\nnot a pair\n", (2, 1), "expected KEY=VALUE"),
            ("1A=x\n", (1, 1), "not a variable name"),
            ("A-B=x\n", (1, 1), "not a variable name"),
            ("A=\"open\n", (1, 3), "not closed"),
            ("  A=\"x\" y\n", (2 - 1, 8), "after the closing"),
            ("A=\"\\q\"\n", (1, 5), "unknown escape"),
        ] {
            let (line, col, problem) = parse(text).expect_err(text);
            assert_eq!((line, col), at, "{text:?}: {problem}");
            assert!(problem.contains(what), "{text:?}: {problem}");
        }
    }

    #[test]
    fn clearing_keeps_the_allowlist_and_the_named() {
        let base: Vec<OsString> = [
            "PATH=/bin",
            "HOME=/root",
            "LANG=C.UTF-8",
            "TZ=UTC",
            "SECRET=x",
            "LC_ALL=C",
            "LC_TIME=C",
            "KEEP=1",
            "KEEPER=2",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(base_for(&base, false, &[]), base);
        let kept = base_for(&base, true, &["LC_*".into(), "KEEP".into()]);
        let kept: Vec<&str> = kept.iter().filter_map(|e| e.to_str()).collect();
        assert_eq!(
            kept,
            [
                "PATH=/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "TZ=UTC",
                "LC_ALL=C",
                "LC_TIME=C",
                "KEEP=1"
            ]
        );
        assert!(check_keep_pattern("LC_*").is_ok());
        assert!(check_keep_pattern("*").is_ok());
        assert!(check_keep_pattern("A-B").is_err());
        assert!(check_keep_pattern("").is_err());
    }

    #[test]
    fn files_that_cannot_be_read_say_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read_file(&dir.path().join("missing.env")).expect_err("missing");
        assert!(e.contains("missing.env") && e.contains("create it"), "{e}");
        let bad = dir.path().join("bad.env");
        std::fs::write(&bad, "OK=1\nBROKEN\n").expect("write");
        let e = read_file(&bad).expect_err("bad");
        assert!(
            e.ends_with("bad.env:2:1: expected KEY=VALUE, found \"BROKEN\""),
            "{e}"
        );
    }
}
