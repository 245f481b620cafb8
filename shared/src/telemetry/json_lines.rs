//! The log lines' JSON, written directly: one line per event, in the shape tracing-subscriber's
//! JSON formatter writes (`timestamp`, `level`, `fields`, then `spans` from the root when the event
//! is inside one), so log queries and tests read it the same.
//!
//! Not tracing-subscriber's formatter: per event it formats the timestamp into a new String, and
//! re-parses every enclosing span's fields from JSON (the Lambda runtime's `requestId` span
//! encloses every line). Here a span's fields are rendered once, when it is created or recorded,
//! and spliced into each line; strings are escaped as serde_json escapes them (`json_text`). A
//! span recording a field twice keeps both entries (tracing-subscriber keeps the last); the
//! broker records none twice.

use crate::json_text::{Escaping, push_padded, push_str as push_json_str};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Writes each event as one JSON line to what `make_writer` returns (stdout on Lambda).
pub struct JsonLines<W> {
    make_writer: fn() -> W,
}

impl<W> JsonLines<W> {
    pub fn new(make_writer: fn() -> W) -> Self {
        Self { make_writer }
    }
}

/// A span's fields as JSON object members (`"k":v,"k2":v2`), kept in the span's extensions.
struct SpanFields(String);

thread_local! {
    /// The line being written, reused across events (one allocation per thread, not per line).
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S, W> tracing_subscriber::Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Write + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Members::object(String::new());
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields.out));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(rendered)) = extensions.get_mut::<SpanFields>() {
            let mut fields = Members::continuing(std::mem::take(rendered));
            values.record(&mut fields);
            *rendered = fields.out;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        LINE.with(|line| {
            // Under a global subscriber tracing dispatches an event logged from inside a Debug impl
            // this line is formatting: it finds the buffer busy and writes from one of its own.
            let mut own;
            let mut borrowed = line.try_borrow_mut();
            let out: &mut String = match borrowed.as_deref_mut() {
                Ok(buffer) => buffer,
                Err(_) => {
                    own = String::new();
                    &mut own
                }
            };
            out.clear();
            out.push_str("{\"timestamp\":\"");
            write_timestamp(out, SystemTime::now());
            out.push_str("\",\"level\":\"");
            out.push_str(event.metadata().level().as_str());
            out.push_str("\",\"fields\":{");
            let mut fields = Members::object(std::mem::take(out));
            event.record(&mut fields);
            *out = fields.out;
            out.push('}');
            let leaf = event
                .parent()
                .and_then(|id| ctx.span(id))
                .or_else(|| ctx.lookup_current());
            if let Some(leaf) = leaf {
                out.push_str(",\"spans\":[");
                for (index, span) in leaf.scope().from_root().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push('{');
                    if let Some(SpanFields(rendered)) = span.extensions().get::<SpanFields>()
                        && !rendered.is_empty()
                    {
                        out.push_str(rendered);
                        out.push(',');
                    }
                    out.push_str("\"name\":");
                    push_json_str(out, span.metadata().name());
                    out.push('}');
                }
                out.push(']');
            }
            out.push_str("}\n");
            // A log line that cannot be written is dropped: logging never fails a request.
            let _ = (self.make_writer)().write_all(out.as_bytes());
        });
    }
}

/// Appends fields as JSON object members, a comma before each but an object's first.
struct Members {
    out: String,
    comma: bool,
}

impl Members {
    /// The first members of an object (`out` ends where they start).
    fn object(out: String) -> Self {
        Self { out, comma: false }
    }

    /// More members after those already in `out` (a span's fields recorded later).
    fn continuing(out: String) -> Self {
        let comma = !out.is_empty();
        Self { out, comma }
    }

    fn key(&mut self, field: &Field) {
        if self.comma {
            self.out.push(',');
        }
        self.comma = true;
        push_json_str(&mut self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for Members {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(&mut self.out, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        // As serde_json writes `format_args!("{value:?}")` (its `collect_str`): escaped while
        // it is formatted.
        self.out.push('"');
        let _ = write!(Escaping(&mut self.out), "{value:?}");
        self.out.push('"');
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    // Integers as serde_json writes them (itoa), without its writer.
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // serde_json writes floats as tracing-serde did (a non-finite one as `null`).
        let _ = serde_json::to_writer(StringWriter(&mut self.out), &value);
    }
}

/// serde_json writes UTF-8 (its escapes keep it valid), so its bytes go into a String as they are.
struct StringWriter<'a>(&'a mut String);

impl Write for StringWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let text = std::str::from_utf8(bytes).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        self.0.push_str(text);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// RFC 3339 UTC with microseconds, as tracing-subscriber's `SystemTime` timer writes it
/// (`2026-11-28T08:22:01.123456Z`). Times before 1970 (a broken clock) are written as 1970.
/// Digits written directly: `write!` ran the formatting machinery for seven numbers per line.
fn write_timestamp(out: &mut String, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    // From 1970 on, so never negative.
    push_padded(out, year.unsigned_abs(), 4);
    for (separator, value, width) in [
        ('-', u64::from(month), 2),
        ('-', u64::from(day), 2),
        ('T', of_day / 3600, 2),
        (':', of_day / 60 % 60, 2),
        (':', of_day % 60, 2),
        ('.', u64::from(since_epoch.subsec_micros()), 6),
    ] {
        out.push(separator);
        push_padded(out, value, width);
    }
    out.push('Z');
}

/// Days since 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use tracing_subscriber::layer::SubscriberExt;

    static OURS: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    static REFERENCE: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    static OTHER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    /// Appends what is written to one of the buffers above (a static: `JsonLines` takes a `fn`).
    struct Captured(&'static Mutex<Vec<u8>>);
    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Shouting;
    impl std::fmt::Debug for Shouting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // A log call while a line is being formatted (the buffer is in use).
            tracing::warn!(inner = true, "from inside Debug");
            f.write_str("LOUD \"quoted\"")
        }
    }

    /// Every kind of field and span the broker and its libraries log, with the characters JSON
    /// must escape.
    fn emit() {
        tracing::info!(
            method = "POST",
            path = "/token",
            status = 200u16,
            latency_ms = 3u64,
            offset = -5i64,
            largest = u64::MAX,
            lowest = i64::MIN,
            ratio = 1.5f64,
            undefined = f64::NAN,
            big = 1u128 << 100,
            ok = true,
            "request"
        );
        tracing::info!("plain");
        tracing::info!("formatted {} {:?}", 5, "x");
        tracing::error!(error = %"bad \"thing\"\n\t\u{1}é😀", debug = ?vec![1, 2], "request failed");
        let invoke = tracing::info_span!(
            "Lambda runtime invoke",
            requestId = "6f1c-\"id\"",
            xrayTraceId = tracing::field::Empty
        );
        let _entered = invoke.enter();
        tracing::warn!(reason = "x", "inside one span");
        invoke.record("xrayTraceId", "Root=1-abc");
        let worker = tracing::info_span!("worker", task_id = %7);
        let _inner = worker.enter();
        tracing::debug!(shouting = ?Shouting, "inside two spans");
        let bare = tracing::info_span!("bare");
        tracing::info!(parent: &bare, "explicit parent");
    }

    fn lines(bytes: &[u8]) -> Vec<String> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .map(|line| {
                let mut json: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
                let timestamp = json["timestamp"].as_str().expect("a timestamp").to_string();
                assert_eq!(timestamp.len(), "2026-11-28T08:22:01.123456Z".len(), "{timestamp}");
                json["timestamp"] = "".into();
                json.to_string()
            })
            .collect()
    }

    #[test]
    fn lines_are_what_tracing_subscribers_json_formatter_writes() {
        let ours = tracing_subscriber::registry().with(JsonLines::new(|| Captured(&OURS)));
        tracing::subscriber::with_default(ours, emit);
        let reference = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(|| Captured(&REFERENCE))
                .with_target(false)
                .with_current_span(false)
                .with_ansi(false),
        );
        tracing::subscriber::with_default(reference, emit);

        let ours = lines(&OURS.lock().unwrap());
        let reference = lines(&REFERENCE.lock().unwrap());
        // tracing does not dispatch an event logged while another is being formatted (with a
        // scoped subscriber, as here), so 7 lines in both.
        assert_eq!(ours.len(), 7, "{ours:#?}");
        assert_eq!(reference.len(), 7, "{reference:#?}");
        assert_eq!(ours[..6], reference[..6]);
        assert!(ours[5].contains(r#""spans":[{"requestId":"6f1c-\"id\"","xrayTraceId":"Root=1-abc","name":"Lambda runtime invoke"},{"task_id":"7","name":"worker"}]"#));
        // An event with an explicit parent lists that parent's spans; tracing-subscriber lists
        // the current span's (the broker and the Lambda runtime log with no explicit parent).
        assert!(
            ours[6].ends_with(r#"{"task_id":"7","name":"worker"},{"name":"bare"}]}"#),
            "{}",
            ours[6]
        );
    }

    /// With a global subscriber (as on Lambda), tracing does dispatch an event logged from inside
    /// a field's Debug while a line is being written: it gets a buffer of its own.
    #[test]
    fn a_line_logged_while_another_is_written_is_written_too() {
        OTHER.lock().unwrap().clear();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(|| Captured(&OTHER)));
        tracing::subscriber::with_default(subscriber, || {
            LINE.with(|line| {
                let _busy = line.borrow_mut();
                tracing::info!(field = "value", "while busy");
            })
        });
        let written = String::from_utf8(OTHER.lock().unwrap().clone()).unwrap();
        assert!(
            written.ends_with("\"fields\":{\"message\":\"while busy\",\"field\":\"value\"}}\n"),
            "{written}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |seconds: u64, micros: u64| {
            let mut out = String::new();
            write_timestamp(
                &mut out,
                UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros),
            );
            out
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(at(1_795_514_400, 123_456), "2026-11-24T10:00:00.123456Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
        let mut before_epoch = String::new();
        write_timestamp(&mut before_epoch, UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(before_epoch, "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn every_character_is_escaped_as_serde_json_escapes_it() {
        for value in (0u8..=0x7f)
            .map(|b| format!("a{}b", b as char))
            .chain(["é€😀".into(), String::new()])
        {
            let mut out = String::new();
            push_json_str(&mut out, &value);
            assert_eq!(out, serde_json::to_string(&value).unwrap(), "{value:?}");
        }
    }

    proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(value in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}])*") {
            let mut out = String::from("x");
            push_json_str(&mut out, &value);
            prop_assert_eq!(&out[1..], serde_json::to_string(&value).unwrap());
        }
    }
}
