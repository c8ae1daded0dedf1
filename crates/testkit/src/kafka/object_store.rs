//! A small S3-compatible object store in the test process, for tansu's
//! `s3://` storage engine: what a broker stores outlives the broker, so a
//! restarted broker finds its topics, records and committed offsets again.
//!
//! Why S3 and not tansu's SQLite engine: tansu 0.6's SQLite engine panics
//! when a consumer group's stored state changed under a concurrent update
//! (`tansu-storage` `lite.rs` `update_group` reads the current state back
//! as a JSON string where it expects an object; the error meets an
//! `unreachable!()` in `service.rs` `From<ServiceError>`), and from then on
//! every request fails with `UnableToSend`: with a few consumer groups
//! committing offsets, that happens within seconds. Its `s3://` engine is
//! the same engine (`DynoStore`) as `memory://`, which every other test
//! uses, over an S3 bucket instead of memory.
//!
//! What is served is what the S3 client of the `object_store` crate asks
//! for (path-style `/{bucket}/{key}`, any bucket name, no authentication):
//! `PUT` (with `If-None-Match: *` or `If-Match`), `GET` and `HEAD` (with
//! `If-Match`, `If-None-Match` and `Range`), `DELETE`, `POST ?delete` and
//! `GET ?list-type=2` (with `prefix`, `delimiter`, `start-after`), over
//! HTTP/1.1 with keep-alive, one thread per connection. Objects live in
//! memory, as long as the [`ObjectStore`] handle.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

struct Object {
    data: Vec<u8>,
    /// Quoted, as S3 sends it.
    etag: String,
    /// Seconds since the epoch.
    modified: u64,
}

#[derive(Default)]
struct Objects {
    by_key: Mutex<BTreeMap<String, Object>>,
    next_etag: AtomicU64,
}

/// Serves until dropped, on `127.0.0.1:port`.
pub(super) struct ObjectStore {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ObjectStore {
    pub(super) fn start() -> anyhow::Result<ObjectStore> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding the object store's port")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let objects = Arc::new(Objects::default());
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tansu-object-store".into())
                .spawn(move || {
                    for connection in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(connection) = connection else { continue };
                        // Each answer is one write; without this, Nagle's
                        // algorithm holds a small one back until the
                        // client's delayed acknowledgement (40 ms a request).
                        let _ = connection.set_nodelay(true);
                        let objects = objects.clone();
                        let _ = std::thread::Builder::new()
                            .name("tansu-object-store-conn".into())
                            .spawn(move || serve(connection, &objects));
                    }
                })
                .context("starting the object store's thread")?
        };
        Ok(ObjectStore {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:port`, the S3 endpoint.
    pub(super) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop up so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Request {
    method: String,
    /// Percent-decoded, without the query.
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// For `HEAD`: the length announced, with no body sent.
    head_length: Option<usize>,
}

impl Response {
    fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            head_length: None,
        }
    }

    fn xml(status: u16, body: String) -> Response {
        let mut response = Response::new(status);
        response
            .headers
            .push(("Content-Type", "application/xml".into()));
        response.body = body.into_bytes();
        response
    }

    fn error(status: u16, code: &str, key: &str) -> Response {
        Response::xml(
            status,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{code}</Message><Key>{}</Key></Error>",
                escape(key)
            ),
        )
    }
}

/// Serves one connection's requests until it closes.
fn serve(connection: TcpStream, objects: &Objects) {
    let Ok(writer) = connection.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(connection);
    let mut writer = writer;
    while let Ok(Some(request)) = read_request(&mut reader) {
        let response = handle(&request, objects);
        if write_response(&mut writer, &response).is_err() {
            return;
        }
        if request
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        read_chunked(reader)?
    } else {
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name, true), decode(value, true))
        })
        .collect();
    Ok(Some(Request {
        method,
        path: decode(path, false),
        query,
        headers,
        body,
    }))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
    }
}

fn write_response(writer: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        _ => "Not Implemented",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", response.status);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if response.status != 204 && response.status != 304 {
        let length = response.head_length.unwrap_or(response.body.len());
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&response.body);
    writer.write_all(&bytes)?;
    writer.flush()
}

/// `/{bucket}/{key}`: the key (`None` for the bucket itself).
fn key_of(path: &str) -> Option<&str> {
    let rest = path.trim_start_matches('/');
    let (_bucket, key) = rest.split_once('/')?;
    (!key.is_empty()).then_some(key)
}

/// Whether an `If-Match` / `If-None-Match` value names `etag` (or is `*`).
fn names(condition: &str, etag: &str) -> bool {
    condition
        .split(',')
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag.trim_matches('"') == etag.trim_matches('"'))
}

fn handle(request: &Request, objects: &Objects) -> Response {
    let key = key_of(&request.path);
    match (request.method.as_str(), key) {
        ("GET", None) if request.query.get("list-type").map(String::as_str) == Some("2") => {
            list(request, objects)
        }
        ("POST", None) if request.query.contains_key("delete") => delete_many(request, objects),
        ("GET" | "HEAD", Some(key)) => get(request, key, objects),
        ("PUT", Some(key))
            if !request.headers.contains_key("x-amz-copy-source")
                && !request.query.contains_key("uploadId") =>
        {
            put(request, key, objects)
        }
        ("DELETE", Some(key)) if !request.query.contains_key("uploadId") => {
            objects.by_key.lock().unwrap().remove(key);
            Response::new(204)
        }
        _ => Response::error(501, "NotImplemented", key.unwrap_or_default()),
    }
}

fn put(request: &Request, key: &str, objects: &Objects) -> Response {
    let mut by_key = objects.by_key.lock().unwrap();
    let existing = by_key.get(key).map(|object| object.etag.as_str());
    if let Some(condition) = request.header("if-none-match")
        && existing.is_some_and(|etag| names(condition, etag))
    {
        return Response::error(412, "PreconditionFailed", key);
    }
    if let Some(condition) = request.header("if-match")
        && !existing.is_some_and(|etag| names(condition, etag))
    {
        return Response::error(412, "PreconditionFailed", key);
    }
    let etag = format!(
        "\"{:032x}\"",
        objects.next_etag.fetch_add(1, Ordering::SeqCst) + 1
    );
    by_key.insert(
        key.to_owned(),
        Object {
            data: request.body.clone(),
            etag: etag.clone(),
            modified: now(),
        },
    );
    let mut response = Response::new(200);
    response.headers.push(("ETag", etag));
    response
}

fn get(request: &Request, key: &str, objects: &Objects) -> Response {
    let by_key = objects.by_key.lock().unwrap();
    let Some(object) = by_key.get(key) else {
        return if request.method == "HEAD" {
            Response::new(404)
        } else {
            Response::error(404, "NoSuchKey", key)
        };
    };
    if let Some(condition) = request.header("if-match")
        && !names(condition, &object.etag)
    {
        return Response::error(412, "PreconditionFailed", key);
    }
    let mut response = Response::new(200);
    response.headers.push(("ETag", object.etag.clone()));
    response
        .headers
        .push(("Last-Modified", http_date(object.modified)));
    if let Some(condition) = request.header("if-none-match")
        && names(condition, &object.etag)
    {
        response.status = 304;
        return response;
    }
    let total = object.data.len();
    let mut range = 0..total;
    if let Some(wanted) = request.header("range") {
        match parse_range(wanted, total) {
            Some(wanted) => {
                response.status = 206;
                response.headers.push((
                    "Content-Range",
                    format!("bytes {}-{}/{total}", wanted.start, wanted.end - 1),
                ));
                range = wanted;
            }
            None => {
                let mut refused = Response::error(416, "InvalidRange", key);
                refused
                    .headers
                    .push(("Content-Range", format!("bytes */{total}")));
                return refused;
            }
        }
    }
    if request.method == "HEAD" {
        response.head_length = Some(range.len());
    } else {
        response.body = object.data[range].to_vec();
    }
    response
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` within `total` bytes.
fn parse_range(value: &str, total: usize) -> Option<std::ops::Range<usize>> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let range = match (start.parse::<usize>().ok(), end.parse::<usize>().ok()) {
        (Some(start), Some(end)) => start..(end + 1).min(total),
        (Some(start), None) => start..total,
        (None, Some(suffix)) => total.saturating_sub(suffix)..total,
        (None, None) => return None,
    };
    (range.start < range.end).then_some(range)
}

fn list(request: &Request, objects: &Objects) -> Response {
    let prefix = request.query.get("prefix").cloned().unwrap_or_default();
    let delimiter = request.query.get("delimiter").filter(|d| !d.is_empty());
    let start_after = request.query.get("start-after");
    let by_key = objects.by_key.lock().unwrap();
    let mut contents = String::new();
    let mut common = BTreeSet::new();
    let mut count = 0;
    for (key, object) in by_key.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        if start_after.is_some_and(|after| key <= after) {
            continue;
        }
        if let Some(delimiter) = delimiter
            && let Some(at) = key[prefix.len()..].find(delimiter.as_str())
        {
            common.insert(key[..prefix.len() + at + delimiter.len()].to_owned());
            continue;
        }
        count += 1;
        contents.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            escape(key),
            iso_date(object.modified),
            escape(&object.etag),
            object.data.len()
        ));
    }
    for prefix in &common {
        contents.push_str(&format!(
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            escape(prefix)
        ));
    }
    Response::xml(
        200,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>tansu</Name><Prefix>{}</Prefix><KeyCount>{}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>",
            escape(&prefix),
            count + common.len()
        ),
    )
}

/// `POST /{bucket}?delete`: the keys of `<Object><Key>…</Key></Object>`.
fn delete_many(request: &Request, objects: &Objects) -> Response {
    let body = String::from_utf8_lossy(&request.body);
    let mut deleted = String::new();
    let mut by_key = objects.by_key.lock().unwrap();
    for piece in body.split("<Key>").skip(1) {
        let Some((key, _)) = piece.split_once("</Key>") else {
            continue;
        };
        let key = unescape(key);
        by_key.remove(&key);
        deleted.push_str(&format!("<Deleted><Key>{}</Key></Deleted>", escape(&key)));
    }
    Response::xml(
        200,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{deleted}</DeleteResult>"
        ),
    )
}

/// Percent-decoding (and `+` as a space in a query).
fn decode(text: &str, query: bool) -> String {
    let bytes = text.as_bytes();
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if query => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// (year, month, day, hours, minutes, seconds, weekday with 0 = Sunday).
fn civil(seconds: u64) -> (i64, u64, u64, u64, u64, u64, u64) {
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 4).rem_euclid(7) as u64;
    (
        year,
        month,
        day,
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60,
        weekday,
    )
}

/// RFC 7231's date: `Tue, 03 Dec 2026 19:35:15 GMT`.
fn http_date(seconds: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, hours, minutes, secs, weekday) = civil(seconds);
    format!(
        "{}, {day:02} {} {year} {hours:02}:{minutes:02}:{secs:02} GMT",
        DAYS[weekday as usize],
        MONTHS[month as usize - 1]
    )
}

/// ISO 8601 in UTC: `2026-12-03T19:35:15.000Z`.
fn iso_date(seconds: u64) -> String {
    let (year, month, day, hours, minutes, secs, _) = civil(seconds);
    format!("{year}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{secs:02}.000Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        // 2026-12-03 19:35:15 UTC, a Thursday.
        let at = 1_796_326_515;
        assert_eq!(http_date(at), "Thu, 03 Dec 2026 19:35:15 GMT");
        assert_eq!(iso_date(at), "2026-12-03T19:35:15.000Z");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(iso_date(951_782_400), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn decoding_and_ranges() {
        assert_eq!(decode("a%2Fb%3D", false), "a/b=");
        assert_eq!(decode("a+b", true), "a b");
        assert_eq!(decode("a+b%", false), "a+b%");
        assert_eq!(parse_range("bytes=2-4", 10), Some(2..5));
        assert_eq!(parse_range("bytes=8-", 10), Some(8..10));
        assert_eq!(parse_range("bytes=-3", 10), Some(7..10));
        assert_eq!(parse_range("bytes=12-", 10), None);
    }

    #[test]
    fn conditions() {
        assert!(names("*", "\"1\""));
        assert!(names("\"1\"", "\"1\""));
        assert!(names("1", "\"1\""));
        assert!(!names("\"2\"", "\"1\""));
    }
}
