//! A minimal HTTP/1.1 client (std only), and reading the Prometheus text it fetches.

use super::*;

/// One HTTP/1.1 request with `Connection: close`: (status, body). Handles Content-Length,
/// chunked and read-to-close bodies. Status 0 with the error text when there is no answer.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    match try_http_request(addr, method, path, headers, body) {
        Ok(reply) => reply,
        Err(e) => (0, e),
    }
}

/// GET PATH from ADDR: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "")
}

pub(crate) fn try_http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut head_end = None;
    let mut content_length = None;
    let mut chunked = false;
    let mut status = 0u16;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            // A reset after the full response (server closed early) is not an error for us.
            Err(e) if head_end.is_some() && e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(format!("read from {addr}: {e}")),
        };
        raw.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            if let Some(pos) = find(&raw, b"\r\n\r\n") {
                head_end = Some(pos + 4);
                let head = String::from_utf8_lossy(&raw[..pos]).into_owned();
                let mut lines = head.split("\r\n");
                status = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad HTTP status line from {addr}: {head:?}"))?;
                for line in lines {
                    if let Some((name, value)) = line.split_once(':') {
                        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                        if name == "content-length" {
                            content_length = value.parse::<usize>().ok();
                        } else if name == "transfer-encoding"
                            && value.to_ascii_lowercase().contains("chunked")
                        {
                            chunked = true;
                        }
                    }
                }
                if method == "HEAD" || status == 204 || status == 304 {
                    content_length = Some(0);
                }
            }
        }
        if let Some(start) = head_end {
            let body = &raw[start..];
            if let Some(len) = content_length.filter(|_| !chunked) {
                if body.len() >= len {
                    return Ok((status, String::from_utf8_lossy(&body[..len]).into_owned()));
                }
            } else if chunked {
                if let Some(decoded) = dechunk(body) {
                    return Ok((status, String::from_utf8_lossy(&decoded).into_owned()));
                }
            }
        }
        if n == 0 {
            return match head_end {
                Some(start) if content_length.is_none() && !chunked => {
                    Ok((status, String::from_utf8_lossy(&raw[start..]).into_owned()))
                }
                _ => Err(format!(
                    "connection to {addr} closed mid-response: {:?}",
                    String::from_utf8_lossy(&raw)
                )),
            };
        }
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decode a complete chunked body; None while incomplete.
pub(crate) fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out); // trailers, if any, are ignored
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Labels of one Prometheus sample line `name{a="x",b="y"} value`; None if NAME differs.
pub(crate) fn prom_sample<'a>(line: &'a str, name: &str) -> Option<(Vec<(&'a str, &'a str)>, f64)> {
    let rest = line.strip_prefix(name)?;
    let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
        let (labels, value) = inner.split_once('}')?;
        (labels, value)
    } else if rest.starts_with(' ') {
        ("", rest)
    } else {
        return None;
    };
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    let labels = labels
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
        .collect();
    Some((labels, value))
}

/// Sum of the samples of metric NAME (exact name) whose labels include all of LABELS.
/// None when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((have, value)) = prom_sample(line, name) else {
            continue;
        };
        if labels.iter().all(|want| have.contains(want)) {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}
