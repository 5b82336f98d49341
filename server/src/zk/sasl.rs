//! SASL DIGEST-MD5 (RFC 2831) as ZooKeeper's server runs it for the users of its JAAS
//! `Server` section (`user_NAME="PASSWORD"`; Baton: `--sasl-user NAME:PASSWORD`).
//!
//! ZooKeeper creates its server with protocol `zookeeper` and server name `zk-sasl-md5`
//! (`SecurityUtils.createSaslServer`), so the realm offered is `zk-sasl-md5` and clients
//! (the Java client, kazoo with pure-sasl) answer for the digest-uri `zookeeper/zk-sasl-md5`.
//! The exchange, one `sasl` request (opcode 102) per step:
//!
//! 1. the client sends an empty token; the server answers the challenge (realm, nonce,
//!    `qop="auth"`, `charset=utf-8`, `algorithm=md5-sess`);
//! 2. the client sends its digest response; the server checks it against the user's password
//!    and answers `rspauth=…`, proving it knows the password too. The connection is then
//!    authenticated as `sasl:NAME`.
//!
//! Anything wrong (unknown user, wrong password, a nonce or digest-uri that is not ours, a
//! step too many) is a failure: ZooKeeper answers AuthFailed and closes the connection.
//! Only `qop=auth` is offered (no integrity or privacy layer), as ZooKeeper's default.

use md5::{Digest, Md5};

/// The realm ZooKeeper's DIGEST-MD5 server offers (its server name).
pub const REALM: &str = "zk-sasl-md5";
/// The digest-uri clients answer for: protocol `zookeeper`, server name `zk-sasl-md5`.
pub const DIGEST_URI: &str = "zookeeper/zk-sasl-md5";
/// Bound on a client's response token (RFC 2831 §2.1.2 limits it to 4096 bytes).
const MAX_RESPONSE: usize = 4096;

/// Where a connection's SASL exchange stands.
#[derive(Debug, Default)]
pub enum SaslState {
    /// Nothing sent yet.
    #[default]
    Start,
    /// The challenge went out with this nonce.
    Challenged {
        /// The server's nonce.
        nonce: String,
    },
    /// Authenticated (or failed): no further step is accepted.
    Done,
}

/// What a step answers.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslStep {
    /// The token to send back; the exchange goes on.
    Continue(Vec<u8>),
    /// Authenticated as `user`; `token` (rspauth) goes back to the client.
    Authenticated {
        /// The SASL user (the `sasl` ACL scheme's id).
        user: String,
        /// The server's proof.
        token: Vec<u8>,
    },
}

/// Why a SASL login was refused (the words of Java's DIGEST-MD5 server where it has some).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaslError {
    /// No `--sasl-user` is configured.
    #[error("SASL is not configured on this server (no --sasl-user)")]
    NotConfigured,
    /// The first token must be empty.
    #[error("DIGEST-MD5 must not have an initial response")]
    InitialResponse,
    /// The response does not parse or lacks a directive.
    #[error("DIGEST-MD5: digest response format violation: {0}")]
    Format(String),
    /// The user is not configured.
    #[error("DIGEST-MD5: cannot acquire password for {0} in realm : zk-sasl-md5")]
    UnknownUser(String),
    /// The digest does not match the password.
    #[error("DIGEST-MD5: digest response format violation. Mismatched response.")]
    Mismatch,
    /// A step after the exchange ended.
    #[error("SASL authentication already complete")]
    Complete,
}

/// One step of the server side: `token` is what the client sent, `password` finds a user's
/// password. `state` moves on; after an error it is `Done`.
pub fn step(
    state: &mut SaslState,
    token: &[u8],
    password: impl Fn(&str) -> Option<String>,
    configured: bool,
) -> Result<SaslStep, SaslError> {
    let now = std::mem::replace(state, SaslState::Done);
    if !configured {
        return Err(SaslError::NotConfigured);
    }
    match now {
        SaslState::Start => {
            if !token.is_empty() {
                return Err(SaslError::InitialResponse);
            }
            let nonce = new_nonce();
            let challenge =
                format!("realm=\"{REALM}\",nonce=\"{nonce}\",qop=\"auth\",charset=utf-8,algorithm=md5-sess");
            *state = SaslState::Challenged { nonce };
            Ok(SaslStep::Continue(challenge.into_bytes()))
        }
        SaslState::Challenged { nonce } => verify(&nonce, token, password),
        SaslState::Done => Err(SaslError::Complete),
    }
}

fn new_nonce() -> String {
    use base64::Engine as _;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut bytes = [0u8; 24];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No entropy source: the clock and a counter still never repeat within a process
        // (a nonce must be fresh; the password, not the nonce, is the secret).
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes[..16].copy_from_slice(&time.to_le_bytes());
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[16..].copy_from_slice(&n.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn verify(nonce: &str, token: &[u8], password: impl Fn(&str) -> Option<String>) -> Result<SaslStep, SaslError> {
    if token.len() > MAX_RESPONSE {
        return Err(SaslError::Format(format!("response of {} bytes", token.len())));
    }
    let text = std::str::from_utf8(token).map_err(|_| SaslError::Format("not UTF-8".into()))?;
    let fields = directives(text)?;
    let get = |key: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str());
    let need = |key: &str| get(key).ok_or_else(|| SaslError::Format(format!("missing {key}")));
    let user = need("username")?;
    let realm = get("realm").unwrap_or("");
    if !realm.is_empty() && realm != REALM {
        return Err(SaslError::Format(format!("Nonexistent realm: {realm}")));
    }
    if need("nonce")? != nonce {
        return Err(SaslError::Format("mismatched nonce".into()));
    }
    let cnonce = need("cnonce")?;
    let nc = need("nc")?;
    if nc != "00000001" {
        return Err(SaslError::Format(format!("nonce count {nc}, expected 00000001")));
    }
    let qop = get("qop").unwrap_or("auth");
    if qop != "auth" {
        return Err(SaslError::Format(format!("qop {qop} was not offered")));
    }
    let uri = need("digest-uri")?;
    if !uri.eq_ignore_ascii_case(DIGEST_URI) {
        return Err(SaslError::Format(format!("Mismatched URI: {uri}; expecting: {DIGEST_URI}")));
    }
    let response = need("response")?;
    let authzid = get("authzid");
    let utf8 = get("charset").is_some_and(|c| c.eq_ignore_ascii_case("utf-8"));
    let secret = password(user).ok_or_else(|| SaslError::UnknownUser(user.to_string()))?;
    let a1 = a1(user, realm, &secret, nonce, cnonce, authzid, utf8);
    let expected = kd(&a1, nonce, nc, cnonce, qop, &format!("AUTHENTICATE:{uri}"));
    if !constant_time_eq(expected.as_bytes(), response.to_ascii_lowercase().as_bytes()) {
        return Err(SaslError::Mismatch);
    }
    let rspauth = kd(&a1, nonce, nc, cnonce, qop, &format!(":{uri}"));
    Ok(SaslStep::Authenticated { user: user.to_string(), token: format!("rspauth={rspauth}").into_bytes() })
}

/// RFC 2831's A1 for md5-sess: `H(user:realm:password):nonce:cnonce[:authzid]`.
fn a1(
    user: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    cnonce: &str,
    authzid: Option<&str>,
    utf8: bool,
) -> Vec<u8> {
    let mut inner = Md5::new();
    inner.update(latin1_if_possible(user, utf8));
    inner.update(b":");
    inner.update(latin1_if_possible(realm, utf8));
    inner.update(b":");
    inner.update(latin1_if_possible(password, utf8));
    let mut a1 = inner.finalize().to_vec();
    a1.extend_from_slice(format!(":{nonce}:{cnonce}").as_bytes());
    if let Some(z) = authzid {
        a1.extend_from_slice(format!(":{z}").as_bytes());
    }
    a1
}

/// `HEX(KD(HEX(H(A1)), nonce:nc:cnonce:qop:HEX(H(A2))))`.
fn kd(a1: &[u8], nonce: &str, nc: &str, cnonce: &str, qop: &str, a2: &str) -> String {
    let ha1 = hex(&Md5::digest(a1));
    let ha2 = hex(&Md5::digest(a2.as_bytes()));
    hex(&Md5::digest(format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}").as_bytes()))
}

/// RFC 2831 §2.1.2.1: with `charset=utf-8`, a value whose characters all fit ISO 8859-1 is
/// hashed in ISO 8859-1; otherwise (and without the charset) as sent.
fn latin1_if_possible(text: &str, utf8: bool) -> Vec<u8> {
    if utf8 && text.chars().all(|c| (c as u32) < 256) {
        text.chars().map(|c| c as u32 as u8).collect()
    } else {
        text.as_bytes().to_vec()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `key=value` or `key="quoted, with \"escapes\""` pairs separated by commas.
fn directives(text: &str) -> Result<Vec<(String, String)>, SaslError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_ascii_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=') {
            key.push(c);
        }
        if chars.next() != Some('=') {
            return Err(SaslError::Format(format!("directive {key:?} has no value")));
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| SaslError::Format("unterminated".into()))?),
                    Some(c) => value.push(c),
                    None => return Err(SaslError::Format(format!("unterminated value of {key}"))),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
        }
        if out.len() >= 32 {
            return Err(SaslError::Format("too many directives".into()));
        }
        out.push((key.trim().to_string(), value.trim_end().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(name: &str) -> Option<String> {
        (name == "bob").then(|| "bobsecret".to_string())
    }

    /// A client's response computed independently of `verify` (RFC 2831's formulas spelled
    /// out again), for the nonce the server sent.
    fn client_response(user: &str, password: &str, nonce: &str, uri: &str) -> String {
        let cnonce = "OA6MHXh6VqTrRk";
        let mut a1 = Md5::digest(format!("{user}:{REALM}:{password}").as_bytes()).to_vec();
        a1.extend_from_slice(format!(":{nonce}:{cnonce}").as_bytes());
        let ha1 = hex(&Md5::digest(&a1));
        let ha2 = hex(&Md5::digest(format!("AUTHENTICATE:{uri}").as_bytes()));
        let response = hex(&Md5::digest(format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}").as_bytes()));
        format!(
            "charset=utf-8,username=\"{user}\",realm=\"{REALM}\",nonce=\"{nonce}\",nc=00000001,cnonce=\"{cnonce}\",digest-uri=\"{uri}\",maxbuf=65536,response={response},qop=auth"
        )
    }

    fn challenge_nonce(state: &mut SaslState) -> String {
        let SaslStep::Continue(challenge) = step(state, b"", users, true).expect("challenge") else {
            panic!("the first step is a challenge")
        };
        let challenge = String::from_utf8(challenge).expect("text");
        assert!(challenge.starts_with("realm=\"zk-sasl-md5\",nonce=\""), "{challenge}");
        assert!(challenge.ends_with("qop=\"auth\",charset=utf-8,algorithm=md5-sess"), "{challenge}");
        let fields = directives(&challenge).expect("parses");
        fields.into_iter().find(|(k, _)| k == "nonce").map(|(_, v)| v).expect("a nonce")
    }

    #[test]
    fn the_right_password_authenticates_and_the_server_proves_it_knows_it() {
        let mut state = SaslState::default();
        let nonce = challenge_nonce(&mut state);
        let answer = step(&mut state, client_response("bob", "bobsecret", &nonce, DIGEST_URI).as_bytes(), users, true);
        let Ok(SaslStep::Authenticated { user, token }) = answer else { panic!("{answer:?}") };
        assert_eq!(user, "bob");
        let token = String::from_utf8(token).expect("text");
        assert!(token.starts_with("rspauth=") && token.len() == 8 + 32, "{token}");
        assert_eq!(step(&mut state, b"", users, true), Err(SaslError::Complete));
    }

    #[test]
    fn a_wrong_password_an_unknown_user_a_foreign_uri_or_a_replayed_nonce_is_refused() {
        let cases: [(&str, &str, Option<&str>, &str); 3] = [
            ("bob", "wrong", None, DIGEST_URI),
            ("eve", "bobsecret", None, DIGEST_URI),
            ("bob", "bobsecret", None, "zookeeper/127.0.0.1"),
        ];
        for (user, password, _, uri) in cases {
            let mut state = SaslState::default();
            let nonce = challenge_nonce(&mut state);
            let answer = step(&mut state, client_response(user, password, &nonce, uri).as_bytes(), users, true);
            assert!(answer.is_err(), "{user}/{password}/{uri} must be refused: {answer:?}");
            assert!(matches!(state, SaslState::Done));
        }
        // A response made for another exchange's nonce.
        let mut first = SaslState::default();
        let old = challenge_nonce(&mut first);
        let mut second = SaslState::default();
        let _ = challenge_nonce(&mut second);
        let replay = client_response("bob", "bobsecret", &old, DIGEST_URI);
        assert!(step(&mut second, replay.as_bytes(), users, true).is_err());
    }

    #[test]
    fn an_initial_response_garbage_or_no_configuration_is_refused() {
        assert_eq!(step(&mut SaslState::default(), b"x", users, true), Err(SaslError::InitialResponse));
        assert_eq!(step(&mut SaslState::default(), b"", users, false), Err(SaslError::NotConfigured));
        for garbage in [&b"username"[..], b"username=\"unterminated", b"\xff\xfe", &[b'a'; 5000]] {
            let mut state = SaslState::default();
            challenge_nonce(&mut state);
            assert!(step(&mut state, garbage, users, true).is_err());
        }
    }

    #[test]
    fn directives_parse_quotes_escapes_and_commas_inside_quotes() {
        let got = directives(r##"a=1, b="x,y", c="q\"z",d="""##).expect("parses");
        let want = [("a", "1"), ("b", "x,y"), ("c", "q\"z"), ("d", "")];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
    }

    #[test]
    fn rfc_2831_example_digest() {
        // RFC 2831 §4's example (IMAP to elwood.innosoft.com): the response directive it shows.
        let a1 = {
            let mut a = Md5::digest(b"chris:elwood.innosoft.com:secret").to_vec();
            a.extend_from_slice(b":OA6MG9tEQGm2hh:OA6MHXh6VqTrRk");
            a
        };
        let response =
            kd(&a1, "OA6MG9tEQGm2hh", "00000001", "OA6MHXh6VqTrRk", "auth", "AUTHENTICATE:imap/elwood.innosoft.com");
        assert_eq!(response, "d388dad90d4bbd760a152321f2143af7");
        let rspauth = kd(&a1, "OA6MG9tEQGm2hh", "00000001", "OA6MHXh6VqTrRk", "auth", ":imap/elwood.innosoft.com");
        assert_eq!(rspauth, "ea40f60335c427b5527b84dbabcdfffd");
    }
}
