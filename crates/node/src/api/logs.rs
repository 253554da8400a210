//! Container logs as `kubectl logs` shows them: the CRI log files that
//! containerd writes, turned back into the text the container printed.
//!
//! A CRI log file holds one record per line:
//! `<RFC3339Nano time> <stdout|stderr> <F|P>[:tags] <text>`, where `P`
//! marks a piece of a line that was too long for one record (the next
//! record of the same stream continues it) and `F` ends a line. Every
//! function here is pure: the file reading and following loop lives in
//! the parent module and feeds bytes in.

use std::collections::VecDeque;

use chrono::{DateTime, FixedOffset};

/// Which output of the container a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// One record of a CRI log file (one line of the file, without its `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The time as written by the runtime (RFC 3339 with nanoseconds).
    pub time: &'a str,
    /// stdout or stderr.
    pub stream: Stream,
    /// True for a `P` record: the line continues in the next record.
    pub partial: bool,
    /// The text, without the line end.
    pub text: &'a [u8],
}

/// Parses one record; `None` when the line is not in CRI format (such
/// lines are skipped, as kubelet does).
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (time, rest) = split_space(line)?;
    let (stream, rest) = split_space(rest)?;
    // An empty line is written as `<time> <stream> F ` but be lenient
    // about the trailing space.
    let (tags, text) = split_space(rest).unwrap_or((rest, &b""[..]));
    let time = std::str::from_utf8(time).ok()?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // Tags are `:`-separated; the first says full or partial.
    let partial = match tags.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return None,
    };
    Some(Record {
        time,
        stream,
        partial,
        text,
    })
}

fn split_space(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|c| *c == b' ')?;
    Some((&b[..i], &b[i + 1..]))
}

/// A log line as the container printed it (partial records joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The time of its first record, as written by the runtime.
    pub time: String,
    /// stdout or stderr.
    pub stream: Stream,
    /// The text without the line end.
    pub text: Vec<u8>,
    /// False when the line never got its end (the container stopped in
    /// the middle of it, or it grew past [`MAX_PENDING_LINE`]).
    pub complete: bool,
}

/// The longest unfinished line kept in memory; longer ones are shown in
/// pieces rather than growing without bound.
pub const MAX_PENDING_LINE: usize = 1024 * 1024;

/// Joins partial records into lines, per stream (stdout and stderr
/// records interleave in one file).
#[derive(Debug, Default)]
pub struct Assembler {
    pending: [Option<Line>; 2],
}

impl Assembler {
    /// Feeds one record; returns the line it completes, if any.
    pub fn push(&mut self, rec: &Record<'_>) -> Option<Line> {
        let slot = &mut self.pending[rec.stream.index()];
        let line = slot.get_or_insert_with(|| Line {
            time: rec.time.to_string(),
            stream: rec.stream,
            text: Vec::new(),
            complete: false,
        });
        line.text.extend_from_slice(rec.text);
        if !rec.partial {
            let mut line = slot.take()?;
            line.complete = true;
            return Some(line);
        }
        if line.text.len() >= MAX_PENDING_LINE {
            return slot.take();
        }
        None
    }

    /// The unfinished lines, oldest first (at the end of a log that will
    /// not grow any more).
    pub fn finish(&mut self) -> Vec<Line> {
        let mut out: Vec<Line> = self.pending.iter_mut().filter_map(Option::take).collect();
        out.sort_by(|a, b| a.time.cmp(&b.time));
        out
    }
}

/// What to show of a log, from the query of `/containerLogs`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// Keep following the file until the container exits.
    pub follow: bool,
    /// Show the previous attempt's container.
    pub previous: bool,
    /// Prefix each line with its time and a space.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines at or after this time.
    pub since: Option<SinceSpec>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
    /// Only this stream (`stream=Stdout|Stderr`; `All` or absent = both).
    pub stream: Option<Stream>,
}

/// Where `since` comes from: a fixed time or an age relative to the
/// moment the request is served.
#[derive(Debug, Clone, PartialEq)]
pub enum SinceSpec {
    /// `sinceTime`.
    Time(DateTime<FixedOffset>),
    /// `sinceSeconds`.
    Seconds(u64),
}

impl SinceSpec {
    /// The earliest time shown, for a request served at `now`.
    pub fn resolve(&self, now: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
        match self {
            SinceSpec::Time(t) => *t,
            SinceSpec::Seconds(s) => i64::try_from(*s)
                .ok()
                .and_then(chrono::TimeDelta::try_seconds)
                .and_then(|d| now.checked_sub_signed(d))
                // Further back than chrono can count: everything.
                .unwrap_or_else(|| DateTime::<chrono::Utc>::MIN_UTC.fixed_offset()),
        }
    }
}

/// A query parameter of the logs, exec or attach endpoints that cannot be
/// served; the message names the parameter (the caller answers 400).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    /// Not a boolean.
    #[error("invalid value {value:?} for query parameter {name}: want true or false")]
    NotBool {
        /// The parameter.
        name: String,
        /// What was sent.
        value: String,
    },
    /// Not an integer.
    #[error("invalid value {value:?} for query parameter {name}: want an integer")]
    NotInteger {
        /// The parameter.
        name: String,
        /// What was sent.
        value: String,
    },
    /// An integer below the parameter's minimum (0 or 1).
    #[error("invalid value {value} for query parameter {name}: must be {}", if *min == 0 { "greater than or equal to 0" } else { "greater than 0" })]
    TooSmall {
        /// The parameter.
        name: String,
        /// What was sent.
        value: i64,
        /// The smallest value allowed.
        min: u64,
    },
    /// Both `sinceTime` and `sinceSeconds`.
    #[error("at most one of query parameters sinceTime or sinceSeconds may be specified")]
    SinceBoth,
    /// A `sinceTime` that is not an RFC 3339 time.
    #[error(
        "invalid value {value:?} for query parameter sinceTime: not an RFC 3339 time: {source}"
    )]
    SinceTime {
        /// What was sent.
        value: String,
        /// The parse error.
        source: chrono::ParseError,
    },
    /// A `stream` other than Stdout, Stderr or All.
    #[error("invalid value {0:?} for query parameter stream: want Stdout, Stderr or All")]
    Stream(String),
    /// `exec` without a command.
    #[error("query parameter command is required: the command to run in the container")]
    NoCommand,
    /// `exec` or `attach` without any stream.
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
}

/// Parses a boolean query value as Kubernetes clients send them.
fn parse_bool(name: &str, v: &str) -> Result<bool, QueryError> {
    match v.to_ascii_lowercase().as_str() {
        "" | "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(QueryError::NotBool {
            name: name.to_string(),
            value: v.to_string(),
        }),
    }
}

fn parse_count(name: &str, v: &str, min: u64) -> Result<u64, QueryError> {
    let n: i64 = v.trim().parse().map_err(|_| QueryError::NotInteger {
        name: name.to_string(),
        value: v.to_string(),
    })?;
    if n < min as i64 {
        return Err(QueryError::TooSmall {
            name: name.to_string(),
            value: n,
            min,
        });
    }
    Ok(n as u64)
}

/// A boolean query flag: present with an empty value counts as true,
/// as for kubelet (`?follow`).
pub(crate) fn flag(pairs: &[(String, String)], name: &str) -> Result<bool, QueryError> {
    match pairs.iter().rev().find(|(k, _)| k == name) {
        None => Ok(false),
        Some((_, v)) => parse_bool(name, v),
    }
}

impl LogOptions {
    /// Decodes the query of `/containerLogs/...`. The error names the
    /// parameter and says what is wrong (the caller answers 400).
    pub fn parse(pairs: &[(String, String)]) -> Result<LogOptions, QueryError> {
        let last = |name: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut opts = LogOptions {
            follow: flag(pairs, "follow")?,
            previous: flag(pairs, "previous")?,
            timestamps: flag(pairs, "timestamps")?,
            ..Default::default()
        };
        // `tail` is kubelet's older spelling; `all` means no limit.
        let tail = last("tailLines")
            .map(|v| ("tailLines", v))
            .or_else(|| last("tail").filter(|v| *v != "all").map(|v| ("tail", v)));
        if let Some((name, v)) = tail {
            let n = parse_count(name, v, 0)?;
            opts.tail_lines = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(v) = last("limitBytes") {
            opts.limit_bytes = Some(parse_count("limitBytes", v, 1)?);
        }
        let secs = last("sinceSeconds").filter(|v| !v.is_empty());
        let time = last("sinceTime").filter(|v| !v.is_empty());
        opts.since = match (secs, time) {
            (Some(_), Some(_)) => return Err(QueryError::SinceBoth),
            (Some(v), None) => Some(SinceSpec::Seconds(parse_count("sinceSeconds", v, 1)?)),
            (None, Some(v)) => Some(SinceSpec::Time(DateTime::parse_from_rfc3339(v).map_err(
                |source| QueryError::SinceTime {
                    value: v.to_string(),
                    source,
                },
            )?)),
            (None, None) => None,
        };
        opts.stream = match last("stream") {
            None | Some("") | Some("All") => None,
            Some("Stdout") => Some(Stream::Stdout),
            Some("Stderr") => Some(Stream::Stderr),
            Some(v) => return Err(QueryError::Stream(v.to_string())),
        };
        Ok(opts)
    }
}

/// Where to start reading so that the last `n` lines (of `stream`, or of
/// both) are all included, searching `buf`, the end of a log file.
///
/// `at_file_start` says `buf` begins at the start of the file; otherwise
/// its first (possibly cut) record is ignored. Returns the offset in
/// `buf`, or `None` when `buf` holds fewer than `n` lines and more of
/// the file is needed. Reading from the offset may also pass lines that
/// are not among the last `n` (another stream's, when partial records
/// interleave): the reader keeps only the last `n` it assembles.
pub fn tail_start(
    buf: &[u8],
    n: usize,
    at_file_start: bool,
    stream: Option<Stream>,
) -> Option<usize> {
    // Complete records only: a trailing cut record is still being written
    // and is read with whatever follows it.
    let end = match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None => return at_file_start.then_some(0),
    };
    if n == 0 {
        return Some(end);
    }
    let begin = if at_file_start {
        0
    } else {
        buf.iter().position(|b| *b == b'\n').map(|i| i + 1)?
    };
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        // Nothing seen yet of this stream (from the end).
        Fresh,
        // Inside one of the wanted lines: earlier `P` records belong to it.
        Collecting,
        // Past the wanted lines of this stream.
        Closed,
    }
    let mut states = [State::Fresh; 2];
    let mut found = 0;
    let mut start = end;
    let mut pos = end;
    while pos > begin {
        // The record ending at `pos` (its `\n` is at pos-1).
        let rec_start = buf[begin..pos - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| begin + i + 1)
            .unwrap_or(begin);
        let rec = parse_record(&buf[rec_start..pos - 1]);
        pos = rec_start;
        let Some(rec) = rec.filter(|r| stream.is_none_or(|s| s == r.stream)) else {
            continue;
        };
        let st = &mut states[rec.stream.index()];
        // A `F` record ends a line; so does the end of the file for a
        // stream whose last record is `P` (an unfinished line).
        if !rec.partial || *st == State::Fresh {
            if found < n {
                found += 1;
                *st = State::Collecting;
                start = rec_start;
            } else {
                *st = State::Closed;
            }
        } else if *st == State::Collecting {
            start = rec_start;
        }
        // Done once every wanted line has been seen back to its first
        // record (a stream still collecting may have earlier pieces).
        if found == n && !states.contains(&State::Collecting) {
            return Some(start);
        }
    }
    // The whole file holds fewer lines than wanted (or the first ones
    // reach back to its start): read it all.
    at_file_start.then_some(if found < n { 0 } else { start })
}

/// Keeps the last `n` lines seen (for `tailLines`).
#[derive(Debug)]
pub struct TailBuffer {
    n: usize,
    lines: VecDeque<Line>,
}

impl TailBuffer {
    /// A buffer for the last `n` lines.
    pub fn new(n: usize) -> TailBuffer {
        TailBuffer {
            n,
            lines: VecDeque::new(),
        }
    }

    /// Adds a line, dropping the oldest beyond `n`.
    pub fn push(&mut self, line: Line) {
        if self.n == 0 {
            return;
        }
        if self.lines.len() == self.n {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The kept lines, oldest first.
    pub fn into_lines(self) -> impl Iterator<Item = Line> {
        self.lines.into_iter()
    }
}

/// Turns lines into the response text: filters by stream and time,
/// adds timestamps, stops at `limitBytes`.
#[derive(Debug)]
pub struct Renderer {
    timestamps: bool,
    since: Option<DateTime<FixedOffset>>,
    stream: Option<Stream>,
    remaining: Option<u64>,
}

impl Renderer {
    /// A renderer for `opts`, with `since` already resolved to a time.
    pub fn new(opts: &LogOptions, since: Option<DateTime<FixedOffset>>) -> Renderer {
        Renderer {
            timestamps: opts.timestamps,
            since,
            stream: opts.stream,
            remaining: opts.limit_bytes,
        }
    }

    /// Whether `limitBytes` has been reached (nothing more will be shown).
    pub fn done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Whether a line passes the stream filter (used before `tail`).
    pub fn wants_stream(&self, line: &Line) -> bool {
        self.stream.is_none_or(|s| s == line.stream)
    }

    /// Appends the text for `line` to `out` (nothing if filtered out).
    pub fn render(&mut self, line: &Line, out: &mut Vec<u8>) {
        if self.done() || !self.wants_stream(line) {
            return;
        }
        if let Some(since) = self.since {
            // A line whose time does not parse is shown: better than
            // hiding output because of a runtime quirk.
            if let Ok(t) = DateTime::parse_from_rfc3339(&line.time)
                && t < since
            {
                return;
            }
        }
        let start = out.len();
        if self.timestamps {
            out.extend_from_slice(line.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&line.text);
        if line.complete {
            out.push(b'\n');
        }
        if let Some(rem) = self.remaining.as_mut() {
            let len = (out.len() - start) as u64;
            if len >= *rem {
                out.truncate(start + *rem as usize);
                *rem = 0;
            } else {
                *rem -= len;
            }
        }
    }
}

/// Splits complete records off the front of `buf`: calls `f` with each
/// record (without its `\n`) and returns how many bytes were consumed;
/// an unfinished record at the end is left for the next read.
pub fn for_each_record(buf: &[u8], mut f: impl FnMut(&[u8])) -> usize {
    let mut consumed = 0;
    while let Some(i) = buf[consumed..].iter().position(|b| *b == b'\n') {
        f(&buf[consumed..consumed + i]);
        consumed += i + 1;
    }
    consumed
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2024-05-01T10:00:00.000000001Z";
    const T2: &str = "2024-05-01T10:00:01.5Z";
    const T3: &str = "2024-05-01T10:00:02.123456789+02:00";

    fn pairs(q: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    /// Runs the whole pipeline over a file's content, as the reader does
    /// for a log that does not grow.
    fn show(file: &str, opts: &LogOptions, now: &str) -> String {
        let now = DateTime::parse_from_rfc3339(now).unwrap();
        let since = opts.since.as_ref().map(|s| s.resolve(now));
        let bytes = file.as_bytes();
        let start = match opts.tail_lines {
            Some(n) => tail_start(bytes, n, true, opts.stream).unwrap(),
            None => 0,
        };
        let mut asm = Assembler::default();
        let mut lines = Vec::new();
        let used = for_each_record(&bytes[start..], |r| {
            if let Some(rec) = parse_record(r)
                && let Some(l) = asm.push(&rec)
            {
                lines.push(l);
            }
        });
        assert_eq!(start + used, bytes.len(), "test files end with a newline");
        lines.extend(asm.finish());
        let mut r = Renderer::new(opts, since);
        let lines: Vec<Line> = lines.into_iter().filter(|l| r.wants_stream(l)).collect();
        let lines: Vec<Line> = match opts.tail_lines {
            Some(n) => {
                let mut t = TailBuffer::new(n);
                lines.into_iter().for_each(|l| t.push(l));
                t.into_lines().collect()
            }
            None => lines,
        };
        let mut out = Vec::new();
        for l in &lines {
            r.render(l, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    fn file() -> String {
        format!(
            "{T1} stdout F hello\n{T1} stderr F oops\n{T2} stdout P wor\n{T2} stdout P l\n{T2} stdout F d\n{T3} stdout F \n{T3} stdout F last line\n"
        )
    }

    #[test]
    fn records_parse() {
        let line = format!("{T1} stderr P a b  c");
        let r = parse_record(line.as_bytes()).unwrap();
        assert_eq!(r.time, T1);
        assert_eq!(r.stream, Stream::Stderr);
        assert!(r.partial);
        assert_eq!(r.text, b"a b  c");
        let line = format!("{T1} stdout F");
        let empty = parse_record(line.as_bytes()).unwrap();
        assert_eq!(empty.text, b"");
        assert!(!empty.partial);
        let line = format!("{T1} stdout F:x y");
        let tagged = parse_record(line.as_bytes()).unwrap();
        assert_eq!(tagged.text, b"y");
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(format!("{T1} stdin F x").as_bytes()).is_none());
        assert!(parse_record(format!("{T1} stdout Q x").as_bytes()).is_none());
        assert!(parse_record(&[0xff, b' ', b's']).is_none());
    }

    #[test]
    fn partial_records_are_joined_per_stream() {
        let mut a = Assembler::default();
        let recs = [
            format!("{T1} stdout P ab"),
            format!("{T2} stderr F err"),
            format!("{T2} stdout F cd"),
            format!("{T3} stderr P tail"),
        ];
        let mut out = Vec::new();
        for r in &recs {
            if let Some(l) = a.push(&parse_record(r.as_bytes()).unwrap()) {
                out.push(l);
            }
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].text, b"err");
        assert_eq!(out[1].text, b"abcd");
        assert_eq!(out[1].time, T1, "a joined line keeps its first time");
        let rest = a.finish();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].text, b"tail");
        assert!(!rest[0].complete);
    }

    #[test]
    fn huge_unfinished_lines_are_bounded() {
        let mut a = Assembler::default();
        let piece = "x".repeat(MAX_PENDING_LINE / 2 + 1);
        let rec = format!("{T1} stdout P {piece}");
        assert!(a.push(&parse_record(rec.as_bytes()).unwrap()).is_none());
        let l = a.push(&parse_record(rec.as_bytes()).unwrap()).unwrap();
        assert!(!l.complete);
        assert!(l.text.len() >= MAX_PENDING_LINE);
    }

    #[test]
    fn whole_log() {
        let o = LogOptions::default();
        assert_eq!(show(&file(), &o, T3), "hello\noops\nworld\n\nlast line\n");
    }

    #[test]
    fn timestamps_prefix_each_line() {
        let o = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            show(&file(), &o, T3),
            format!("{T1} hello\n{T1} oops\n{T2} world\n{T3} \n{T3} last line\n")
        );
    }

    #[test]
    fn tail_counts_joined_lines() {
        let f = file();
        for (n, want) in [
            (0, ""),
            (1, "last line\n"),
            (2, "\nlast line\n"),
            (3, "world\n\nlast line\n"),
            (4, "oops\nworld\n\nlast line\n"),
            (5, "hello\noops\nworld\n\nlast line\n"),
            (50, "hello\noops\nworld\n\nlast line\n"),
        ] {
            let o = LogOptions {
                tail_lines: Some(n),
                ..Default::default()
            };
            assert_eq!(show(&f, &o, T3), want, "tail {n}");
        }
    }

    #[test]
    fn tail_start_finds_the_first_record_of_a_partial_line() {
        let f = file();
        let b = f.as_bytes();
        let third = f.find(&format!("{T2} stdout P wor")).unwrap();
        assert_eq!(tail_start(b, 3, true, None), Some(third));
        // From the middle of the file: not enough lines yet.
        let cut = &b[third - 3..];
        assert_eq!(tail_start(cut, 4, false, None), None);
        // Three lines are there, but an earlier `P` record (in the cut
        // one, or before it) could still belong to the first of them.
        assert_eq!(tail_start(cut, 3, false, None), None);
        let last = f.find(&format!("{T3} stdout F last")).unwrap();
        assert_eq!(tail_start(cut, 1, false, None), Some(last - (third - 3)));
        // Only stderr lines.
        let oops = f.find(&format!("{T1} stderr")).unwrap();
        assert_eq!(tail_start(b, 1, true, Some(Stream::Stderr)), Some(oops));
        // Nothing complete in the buffer.
        assert_eq!(tail_start(b"no newline", 1, false, None), None);
        assert_eq!(tail_start(b"no newline", 1, true, None), Some(0));
        assert_eq!(tail_start(b"", 1, true, None), Some(0));
    }

    #[test]
    fn tail_with_interleaved_partials_keeps_exactly_n() {
        // stdout's long line starts before stderr's lines and ends after.
        let f = format!(
            "{T1} stdout F first\n{T1} stdout P lo\n{T1} stderr F e1\n{T1} stderr F e2\n{T2} stdout F ng\n"
        );
        let o = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(show(&f, &o, T3), "e2\nlong\n");
        let o = LogOptions {
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(show(&f, &o, T3), "long\n");
    }

    #[test]
    fn since_filters_by_the_line_time() {
        let o = LogOptions {
            since: Some(SinceSpec::Time(DateTime::parse_from_rfc3339(T2).unwrap())),
            ..Default::default()
        };
        // T3 is +02:00, i.e. before T1 in UTC terms: filtered out.
        assert_eq!(show(&file(), &o, T3), "world\n");
        let o = LogOptions {
            since: Some(SinceSpec::Seconds(1)),
            ..Default::default()
        };
        // now = 10:00:02Z: since = 10:00:01Z; world (10:00:01.5Z) passes.
        assert_eq!(show(&file(), &o, "2024-05-01T10:00:02Z"), "world\n");
        // tail is applied first, then since (as kubelet does).
        let o = LogOptions {
            tail_lines: Some(4),
            since: Some(SinceSpec::Time(DateTime::parse_from_rfc3339(T1).unwrap())),
            ..Default::default()
        };
        assert_eq!(show(&file(), &o, T3), "oops\nworld\n");
    }

    #[test]
    fn limit_bytes_truncates_the_output() {
        let o = LogOptions {
            limit_bytes: Some(8),
            ..Default::default()
        };
        assert_eq!(show(&file(), &o, T3), "hello\noo");
        let o = LogOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(show(&file(), &o, T3), "hello\n");
        let mut r = Renderer::new(&o, None);
        let line = Line {
            time: T1.into(),
            stream: Stream::Stdout,
            text: b"hello".to_vec(),
            complete: true,
        };
        let mut out = Vec::new();
        r.render(&line, &mut out);
        assert!(r.done());
        r.render(&line, &mut out);
        assert_eq!(out, b"hello\n");
    }

    #[test]
    fn stream_selects_one_output() {
        let o = LogOptions {
            stream: Some(Stream::Stderr),
            ..Default::default()
        };
        assert_eq!(show(&file(), &o, T3), "oops\n");
        let o = LogOptions {
            stream: Some(Stream::Stdout),
            tail_lines: Some(4),
            ..Default::default()
        };
        assert_eq!(show(&file(), &o, T3), "hello\nworld\n\nlast line\n");
    }

    #[test]
    fn unfinished_last_line_has_no_newline() {
        let f = format!("{T1} stdout F a\n{T1} stdout P b\n");
        assert_eq!(show(&f, &LogOptions::default(), T3), "a\nb");
        let o = LogOptions {
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(show(&f, &o, T3), "b");
    }

    #[test]
    fn unparsable_records_are_skipped() {
        let f = format!("{T1} stdout F a\nnot a record\n{T1} stdout F b\n");
        assert_eq!(show(&f, &LogOptions::default(), T3), "a\nb\n");
    }

    #[test]
    fn query_parses() {
        let o = LogOptions::parse(&pairs(
            "follow=true&tailLines=10&timestamps=1&previous=false&limitBytes=5&sinceSeconds=30&stream=Stderr",
        ))
        .unwrap();
        assert_eq!(
            o,
            LogOptions {
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: Some(10),
                since: Some(SinceSpec::Seconds(30)),
                limit_bytes: Some(5),
                stream: Some(Stream::Stderr),
            }
        );
        let o =
            LogOptions::parse(&pairs("sinceTime=2024-05-01T10:00:00Z&tail=all&follow")).unwrap();
        assert!(o.follow);
        assert_eq!(o.tail_lines, None);
        assert!(matches!(o.since, Some(SinceSpec::Time(_))));
        assert_eq!(
            LogOptions::parse(&pairs("tail=3")).unwrap().tail_lines,
            Some(3)
        );
        assert_eq!(LogOptions::parse(&[]).unwrap(), LogOptions::default());
    }

    #[test]
    fn bad_query_values_name_the_parameter() {
        for (q, name) in [
            ("tailLines=-1", "tailLines"),
            ("tailLines=x", "tailLines"),
            ("tailLines=99999999999999999999", "tailLines"),
            ("limitBytes=0", "limitBytes"),
            ("sinceSeconds=0", "sinceSeconds"),
            ("sinceSeconds=1.5", "sinceSeconds"),
            ("sinceTime=yesterday", "sinceTime"),
            (
                "sinceTime=2024-05-01T10:00:00Z&sinceSeconds=5",
                "sinceSeconds",
            ),
            ("follow=maybe", "follow"),
            ("timestamps=yes", "timestamps"),
            ("previous=2", "previous"),
            ("stream=stdin", "stream"),
        ] {
            let e = LogOptions::parse(&pairs(q)).unwrap_err().to_string();
            assert!(e.contains(name), "{q}: {e}");
        }
    }

    #[test]
    fn since_seconds_resolves_against_now() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:00:10Z").unwrap();
        assert_eq!(
            SinceSpec::Seconds(10).resolve(now),
            DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z").unwrap()
        );
        // Absurd values do not overflow.
        let _ = SinceSpec::Seconds(u64::MAX).resolve(now);
    }
}
