//! Authorization of the admin endpoints (`POST /admin/redis-target`).

use crate::http::Req;

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Admin authorization: a bearer token when `ADMIN_TOKEN` (`token`) is set; without one,
/// refused unless `--admin-allow-unauthenticated-loopback` (`allow_loopback`) and the client
/// is on loopback. A refusal is the HTTP status and the error.
pub(super) fn authorize(
    token: Option<&str>,
    allow_loopback: bool,
    req: &Req,
) -> Result<(), (u16, String)> {
    let given = req
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match (token, given) {
        (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.as_bytes()) => Ok(()),
        (Some(_), Some(_)) => Err((403, "invalid admin token".into())),
        (Some(_), None) => Err((
            401,
            "missing bearer token (Authorization: Bearer <ADMIN_TOKEN>)".into(),
        )),
        (None, _) if allow_loopback && req.peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
        (None, _) => Err((
            403,
            "admin endpoints are disabled: set ADMIN_TOKEN (or --admin-allow-unauthenticated-loopback for local use)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn should_compare_tokens_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
