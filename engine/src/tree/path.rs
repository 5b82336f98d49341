//! ZooKeeper's path rules (`PathUtils.validatePath`), and path helpers.

use super::ErrorCode;

/// Checks a znode path as ZooKeeper does: absolute, no trailing slash (except the root), no
/// empty, `.` or `..` components, and none of the characters ZooKeeper forbids (NUL, C0/C1
/// controls, U+E000–U+F8FF, U+FFF0–U+FFFF, and anything outside the Basic Multilingual Plane,
/// which Java would see as surrogates). For a sequential create, pass `sequential` so that
/// a trailing slash is allowed (ZooKeeper validates `path + "1"`).
pub fn validate_path(path: &str, sequential: bool) -> Result<(), ErrorCode> {
    let bad = Err(ErrorCode::BadArguments);
    if !path.starts_with('/') {
        return bad;
    }
    if path.len() == 1 {
        return Ok(());
    }
    if path.ends_with('/') && !sequential {
        return bad;
    }
    let body = if sequential && path.ends_with('/') { &path[1..path.len() - 1] } else { &path[1..] };
    if sequential && path.ends_with('/') && body.is_empty() {
        return Ok(());
    }
    for component in body.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            // A sequential create's last component may be empty or dots: the counter follows.
            return bad;
        }
        if component.chars().any(forbidden) {
            return bad;
        }
    }
    Ok(())
}

/// Checks one component of a path (a znode's name) by the rules of [`validate_path`].
pub fn validate_name(name: &str) -> Result<(), ErrorCode> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.chars().any(forbidden) {
        return Err(ErrorCode::BadArguments);
    }
    Ok(())
}

fn forbidden(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{e000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}')
        || c > '\u{ffff}'
}

/// The parent of a valid non-root path (`/a/b` → `/a`, `/a` → `/`).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last component of a valid path (`/a/b` → `b`; the root → empty).
pub fn name(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// Joins a parent path and a child name.
pub fn join(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_zookeeper_accepts() {
        for p in ["/", "/a", "/a/b", "/a.b", "/..a", "/a/...", "/zookeeper/quota", "/ünïcödé", "/a b"] {
            assert_eq!(validate_path(p, false), Ok(()), "{p}");
        }
        for p in ["/", "/a/", "/a/b-"] {
            assert_eq!(validate_path(p, true), Ok(()), "sequential {p}");
        }
    }

    #[test]
    fn refuses_what_zookeeper_refuses() {
        for p in [
            "",
            "a",
            "/a/",
            "//",
            "/a//b",
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/a\u{0}",
            "/\u{1}",
            "/\u{7f}",
            "/\u{e000}",
            "/\u{fff5}",
            "/😀",
        ] {
            assert_eq!(validate_path(p, false), Err(ErrorCode::BadArguments), "{p:?}");
        }
        assert_eq!(validate_path("/a//", true), Err(ErrorCode::BadArguments));
    }

    #[test]
    fn parent_name_and_join() {
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(parent("/a"), "/");
        assert_eq!(name("/a/b/c"), "c");
        assert_eq!(name("/"), "");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a", "x"), "/a/x");
    }
}
