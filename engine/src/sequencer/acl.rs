//! ACL checks and fix-up, as ZooKeeper's `checkACL` and `PrepRequestProcessor.fixupACL`.

use std::net::IpAddr;

use crate::log::Acl;
use crate::tree::ErrorCode;

/// Permission bits (`ZooDefs.Perms`).
#[allow(missing_docs)]
pub mod perms {
    pub const READ: i32 = 1;
    pub const WRITE: i32 = 2;
    pub const CREATE: i32 = 4;
    pub const DELETE: i32 = 8;
    pub const ADMIN: i32 = 16;
    pub const ALL: i32 = 31;
}

/// An identity a session has proven: `ip:127.0.0.1` from its connection, `digest:user:hash`
/// from `addauth digest`, `super:` for the super user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AuthId {
    /// Scheme.
    pub scheme: String,
    /// Identity within the scheme.
    pub id: String,
}

impl AuthId {
    /// A new id.
    pub fn new(scheme: &str, id: &str) -> AuthId {
        AuthId { scheme: scheme.into(), id: id.into() }
    }
}

/// Whether `auth` may do `perm` on a znode with `acl` (ZooKeeper's `checkACL`).
pub fn check(acl: &[Acl], perm: i32, auth: &[AuthId]) -> Result<(), ErrorCode> {
    if acl.is_empty() || auth.iter().any(|a| a.scheme == "super") {
        return Ok(());
    }
    for entry in acl.iter().filter(|a| a.perms & perm != 0) {
        if entry.scheme == "world" && entry.id == "anyone" {
            return Ok(());
        }
        for who in auth.iter().filter(|a| a.scheme == entry.scheme) {
            let matched = match entry.scheme.as_str() {
                "ip" => ip_matches(&who.id, &entry.id),
                _ => who.id == entry.id,
            };
            if matched {
                return Ok(());
            }
        }
    }
    Err(ErrorCode::NoAuth)
}

/// `addr` falls in `pattern` (`a.b.c.d`, `a.b.c.d/bits`, or IPv6 likewise).
pub fn ip_matches(addr: &str, pattern: &str) -> bool {
    let (net, bits) = match pattern.split_once('/') {
        Some((net, bits)) => (net, bits.parse::<u32>().ok()),
        None => (pattern, None),
    };
    let (Ok(addr), Ok(net)) = (addr.parse::<IpAddr>(), net.parse::<IpAddr>()) else { return false };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => prefix_eq(&a.octets(), &n.octets(), bits.unwrap_or(32)),
        (IpAddr::V6(a), IpAddr::V6(n)) => prefix_eq(&a.octets(), &n.octets(), bits.unwrap_or(128)),
        _ => false,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let bits = bits.min(a.len() as u32 * 8);
    let mut left = bits;
    for (x, y) in a.iter().zip(b) {
        if left == 0 {
            return true;
        }
        let take = left.min(8);
        let mask = (0xffu16 << (8 - take)) as u8;
        if x & mask != y & mask {
            return false;
        }
        left -= take;
    }
    true
}

fn valid_id(scheme: &str, id: &str) -> bool {
    match scheme {
        "world" => id == "anyone",
        "digest" => id.split(':').count() == 2,
        "ip" => {
            let (net, bits) = id.split_once('/').map_or((id, None), |(n, b)| (n, Some(b)));
            net.parse::<IpAddr>().is_ok() && bits.is_none_or(|b| b.parse::<u8>().is_ok())
        }
        "super" => true,
        "sasl" => kerberos_name(id),
        // ZooKeeper's X509AuthenticationProvider takes any id (a certificate's subject).
        "x509" => !id.is_empty(),
        _ => false,
    }
}

/// ZooKeeper's `SASLAuthenticationProvider.isValid`: a Kerberos name, `name[/host]@REALM` with
/// no further `/` or `@`, or any name without `@` (a DIGEST-MD5 user).
fn kerberos_name(id: &str) -> bool {
    let Some((principal, realm)) = id.split_once('@') else { return true };
    let (service, host) = principal.split_once('/').unwrap_or((principal, ""));
    !realm.contains(['/', '@']) && !service.contains('/') && !host.contains('/')
}

/// Checks and expands the ACL of a create or setACL: refuses an empty list and unknown or
/// malformed ids, expands `auth` into the session's authenticated ids, removes duplicates.
pub fn fixup(acl: &[Acl], auth: &[AuthId]) -> Result<Vec<Acl>, ErrorCode> {
    let mut out: Vec<Acl> = Vec::new();
    let mut push = |a: Acl| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    if acl.is_empty() {
        return Err(ErrorCode::InvalidAcl);
    }
    for a in acl {
        if a.scheme == "auth" {
            // Only providers that authenticate count (digest, sasl, x509; not ip), as ZooKeeper.
            let mut any = false;
            for who in auth.iter().filter(|w| matches!(w.scheme.as_str(), "digest" | "sasl" | "x509" | "super")) {
                any = true;
                push(Acl { perms: a.perms, scheme: who.scheme.clone(), id: who.id.clone() });
            }
            if !any {
                return Err(ErrorCode::InvalidAcl);
            }
        } else if valid_id(&a.scheme, &a.id) {
            push(a.clone());
        } else {
            return Err(ErrorCode::InvalidAcl);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(perms: i32, scheme: &str, id: &str) -> Acl {
        Acl { perms, scheme: scheme.into(), id: id.into() }
    }

    #[test]
    fn world_anyone_allows_only_the_granted_bits() {
        let a = vec![acl(perms::READ, "world", "anyone")];
        assert_eq!(check(&a, perms::READ, &[]), Ok(()));
        assert_eq!(check(&a, perms::WRITE, &[]), Err(ErrorCode::NoAuth));
        assert_eq!(check(&[], perms::ADMIN, &[]), Ok(()), "an empty ACL allows all, as ZooKeeper");
    }

    #[test]
    fn digest_and_ip_and_super() {
        let a = vec![acl(perms::ALL, "digest", "bob:hash"), acl(perms::READ, "ip", "10.1.0.0/16")];
        assert_eq!(check(&a, perms::WRITE, &[AuthId::new("digest", "bob:hash")]), Ok(()));
        assert_eq!(check(&a, perms::WRITE, &[AuthId::new("digest", "eve:hash")]), Err(ErrorCode::NoAuth));
        assert_eq!(check(&a, perms::READ, &[AuthId::new("ip", "10.1.200.3")]), Ok(()));
        assert_eq!(check(&a, perms::READ, &[AuthId::new("ip", "10.2.0.1")]), Err(ErrorCode::NoAuth));
        assert_eq!(check(&a, perms::ADMIN, &[AuthId::new("super", "")]), Ok(()));
    }

    #[test]
    fn ip_prefixes() {
        assert!(ip_matches("127.0.0.1", "127.0.0.1"));
        assert!(ip_matches("127.0.0.9", "127.0.0.0/24"));
        assert!(!ip_matches("127.0.1.9", "127.0.0.0/24"));
        assert!(ip_matches("::1", "::1"));
        assert!(!ip_matches("::1", "127.0.0.1"));
        assert!(!ip_matches("junk", "127.0.0.1"));
    }

    #[test]
    fn fixup_expands_auth_and_refuses_bad_acls() {
        let me = [AuthId::new("ip", "127.0.0.1"), AuthId::new("digest", "bob:h")];
        assert_eq!(fixup(&[acl(31, "auth", "")], &me), Ok(vec![acl(31, "digest", "bob:h")]));
        let x509 = [AuthId::new("ip", "127.0.0.1"), AuthId::new("x509", "CN=alice,O=Baton")];
        assert_eq!(fixup(&[acl(31, "auth", "")], &x509), Ok(vec![acl(31, "x509", "CN=alice,O=Baton")]));
        assert_eq!(fixup(&[acl(1, "x509", "CN=bob")], &me), Ok(vec![acl(1, "x509", "CN=bob")]));
        assert_eq!(check(&[acl(1, "x509", "CN=bob")], 1, &x509), Err(ErrorCode::NoAuth));
        assert_eq!(check(&[acl(1, "x509", "CN=alice,O=Baton")], 1, &x509), Ok(()));
        assert_eq!(fixup(&[acl(31, "auth", "")], &me[..1]), Err(ErrorCode::InvalidAcl));
        assert_eq!(fixup(&[], &me), Err(ErrorCode::InvalidAcl));
        assert_eq!(fixup(&[acl(31, "nope", "x")], &me), Err(ErrorCode::InvalidAcl));
        assert_eq!(fixup(&[acl(31, "world", "someone")], &me), Err(ErrorCode::InvalidAcl));
        assert_eq!(fixup(&[acl(31, "ip", "10.0.0.0/8")], &me).map(|v| v.len()), Ok(1));
        let sasl = [AuthId::new("ip", "127.0.0.1"), AuthId::new("sasl", "bob")];
        assert_eq!(fixup(&[acl(31, "auth", "")], &sasl), Ok(vec![acl(31, "sasl", "bob")]));
        for good in ["bob", "zk/host@EXAMPLE.COM", "bob@EXAMPLE.COM", "a/b/c"] {
            assert_eq!(fixup(&[acl(31, "sasl", good)], &me).map(|v| v.len()), Ok(1), "{good}");
        }
        for bad in ["a@b@c", "a/b/c@R", "a@R/x"] {
            assert_eq!(fixup(&[acl(31, "sasl", bad)], &me), Err(ErrorCode::InvalidAcl), "{bad}");
        }
        let dup = [acl(31, "world", "anyone"), acl(31, "world", "anyone")];
        assert_eq!(fixup(&dup, &me).map(|v| v.len()), Ok(1));
    }
}
