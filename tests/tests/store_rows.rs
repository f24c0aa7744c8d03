//! Rows you can trust (issue 10, item 12, and the query flags). A store written by the real
//! daemon (`ctrwatch run` while a script creates, writes, renames and deletes files) is copied,
//! and each copy damaged the way a bad disk or a careless copy damages a file: truncated by one
//! byte, one byte of a details blob flipped, an event's path id flipped, an event column's type
//! flipped, a process row's `tid` flipped. On every copy the query commands must print every
//! row they can read (exactly as the undamaged store answers), skip the damaged ones, say so
//! ("N unreadable rows skipped" on stderr, a final `{"op":"unreadable",...}` record with
//! --json) and exit 5. Corruption is never exit 0 or 1, and a changed value is never printed
//! as if it were stored. Also: bad globs in --exe/--comm/--unit exit 2 like --path, --limit 0
//! is a usage error, and --limit beyond i64 is clamped (no SQLite error). Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    collections::BTreeSet,
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags, types::Value as SqlValue};
use serde_json::Value;
use tests::{Watcher, ctrwatch, json_lines, process, s, temp_dir};

/// The script's name: its shell's `comm`, so its events are easy to find.
const SCRIPT: &str = "rowmaker.sh";
/// Files the script creates (two events each: the create and the write).
const FILES: usize = 1200;

struct Fixture {
    base: PathBuf,
    store: PathBuf,
    /// The snapshot directory the script works in.
    layer: PathBuf,
    /// `query --json` of the undamaged store, every event, one JSON text per event.
    all: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(make_fixture)
}

fn make_fixture() -> Fixture {
    let base = temp_dir("store-rows");
    tests::remove_at_exit(&base);
    let root = base.join("root");
    let layer = root.join("io.containerd.snapshotter.v1.overlayfs/snapshots/5/fs");
    std::fs::create_dir_all(&layer).expect("mkdir layer");
    let store = base.join("store/events.db");
    let script = base.join(SCRIPT);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncd {}\ni=0\nwhile [ $i -lt {FILES} ]; do i=$((i+1)); echo \"content $i\" > f$i; done\n\
             chmod 600 f1\nmv f2 f3\nrm f4\n",
            layer.display()
        ),
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod script");
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.as_os_str().to_owned(),
        "--store".into(),
        store.as_os_str().to_owned(),
    ];
    let daemon = Watcher::start_command(&args);
    let status = Command::new(&script).status().expect("run script");
    assert!(status.success(), "{SCRIPT} failed");
    // Wait until the last operation is stored and the count no longer grows.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    loop {
        let (code, out, err) = query(&store, &["--limit", "100000000"]);
        assert_eq!(code, 0, "query of the fresh store: {err}");
        let n = out.lines().count();
        let done = out.lines().any(|l| l.contains("\"op\":\"unlink\""));
        if done && n == last {
            break;
        }
        last = n;
        assert!(
            Instant::now() < deadline,
            "the daemon never stored the script's events"
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    // A clean stop checkpoints the WAL into the database file: the file is the whole store.
    daemon.stop();
    let (code, out, err) = query(&store, &["--limit", "100000000"]);
    assert_eq!(code, 0, "{err}");
    let all: Vec<String> = out.lines().map(str::to_string).collect();
    assert!(all.len() >= 2 * FILES, "only {} events stored", all.len());
    Fixture {
        base,
        store,
        layer,
        all,
    }
}

/// `ctrwatch query --store STORE --json ARGS...`.
fn query(store: &Path, args: &[&str]) -> (i32, String, String) {
    let mut a: Vec<&OsStr> = vec![
        OsStr::new("query"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ];
    a.extend(args.iter().map(OsStr::new));
    ctrwatch(&a)
}

/// A copy of the fixture's store (the database file alone, as an operator would copy it).
fn copy_of(name: &str) -> PathBuf {
    let f = fixture();
    let dir = f.base.join(format!("copy-{name}"));
    std::fs::create_dir_all(&dir).expect("mkdir copy");
    let copy = dir.join("events.db");
    std::fs::copy(&f.store, &copy).expect("copy store");
    copy
}

// ---------------------------------------------------------------------------------------------
// Locating a row's bytes in the database file: its record is rebuilt from its values in
// SQLite's record format (file format 4) and searched for.

fn sqlite_varint(mut v: u64, out: &mut Vec<u8>) {
    if v > 0x00ff_ffff_ffff_ffff {
        let mut buf = [0u8; 9];
        buf[8] = v as u8;
        v >>= 8;
        for i in (0..8).rev() {
            buf[i] = ((v & 0x7f) as u8) | 0x80;
            v >>= 7;
        }
        out.extend_from_slice(&buf);
        return;
    }
    let mut tmp = Vec::new();
    loop {
        tmp.push(((v & 0x7f) as u8) | 0x80);
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    tmp[0] &= 0x7f;
    tmp.reverse();
    out.extend_from_slice(&tmp);
}

/// (serial type, body bytes) of one value.
fn serial(v: &SqlValue) -> (u64, Vec<u8>) {
    match v {
        SqlValue::Null => (0, Vec::new()),
        SqlValue::Integer(0) => (8, Vec::new()),
        SqlValue::Integer(1) => (9, Vec::new()),
        SqlValue::Integer(i) => {
            let i = *i;
            let (t, n) = if (-128..=127).contains(&i) {
                (1, 1)
            } else if (-32768..=32767).contains(&i) {
                (2, 2)
            } else if (-8_388_608..=8_388_607).contains(&i) {
                (3, 3)
            } else if (i32::MIN as i64..=i32::MAX as i64).contains(&i) {
                (4, 4)
            } else if (-(1i64 << 47)..(1i64 << 47)).contains(&i) {
                (5, 6)
            } else {
                (6, 8)
            };
            (t, i.to_be_bytes()[8 - n..].to_vec())
        }
        SqlValue::Real(f) => (7, f.to_bits().to_be_bytes().to_vec()),
        SqlValue::Text(t) => (t.len() as u64 * 2 + 13, t.as_bytes().to_vec()),
        SqlValue::Blob(b) => (b.len() as u64 * 2 + 12, b.clone()),
    }
}

/// Where a row's record lies in the file: the offset of each column's serial type byte in
/// the header (single-byte types only) and of its body bytes, and where it starts and ends.
struct RecordAt {
    start: usize,
    type_at: Vec<usize>,
    body_at: Vec<usize>,
    len: usize,
}

fn read_sqlite_varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v: u64 = 0;
    for i in 0..9 {
        let byte = b[*pos];
        *pos += 1;
        if i == 8 {
            return (v << 8) | u64::from(byte);
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

/// The file offset of the payload of the row with rowid `id` in the table b-tree rooted at
/// page `root`: the live copy, found by walking the b-tree (a page's free space may still
/// hold older copies of a row after a split).
fn payload_offset(file: &[u8], page_size: usize, root: usize, id: i64) -> usize {
    let mut page_no = root;
    loop {
        let base = (page_no - 1) * page_size;
        // Page 1 starts with the 100-byte file header.
        let hdr = base + if page_no == 1 { 100 } else { 0 };
        let kind = file[hdr];
        let cells = usize::from(u16::from_be_bytes([file[hdr + 3], file[hdr + 4]]));
        let ptrs = hdr + if kind == 5 { 12 } else { 8 };
        let cell = |i: usize| {
            base + usize::from(u16::from_be_bytes([
                file[ptrs + 2 * i],
                file[ptrs + 2 * i + 1],
            ]))
        };
        match kind {
            // Interior table page: cells are (left child, largest rowid in it).
            5 => {
                let mut next = u32::from_be_bytes([
                    file[hdr + 8],
                    file[hdr + 9],
                    file[hdr + 10],
                    file[hdr + 11],
                ]) as usize;
                for i in 0..cells {
                    let at = cell(i);
                    let child =
                        u32::from_be_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]])
                            as usize;
                    let mut pos = at + 4;
                    if read_sqlite_varint(file, &mut pos) as i64 >= id {
                        next = child;
                        break;
                    }
                }
                page_no = next;
            }
            // Leaf table page: cells are (payload size, rowid, payload).
            13 => {
                for i in 0..cells {
                    let mut pos = cell(i);
                    read_sqlite_varint(file, &mut pos);
                    if read_sqlite_varint(file, &mut pos) as i64 == id {
                        return pos;
                    }
                }
                panic!("row {id} not in its leaf page {page_no}");
            }
            k => panic!("page {page_no}: not a table b-tree page (type {k})"),
        }
    }
}

/// Finds the record of the row of `table` with rowid `id` (its INTEGER PRIMARY KEY is stored
/// as NULL in the record) in the database file, and checks it is the record its values make.
fn locate(db: &Path, table: &str, id: i64) -> RecordAt {
    let (record, type_at, body_at) = record_of(db, table, id);
    let file = std::fs::read(db).expect("read db");
    let page_size = scalar(db, "PRAGMA page_size") as usize;
    let root = scalar(
        db,
        &format!("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = '{table}'"),
    ) as usize;
    let start = payload_offset(&file, page_size, root, id);
    assert_eq!(
        file.get(start..start + record.len()),
        Some(record.as_slice()),
        "{table} row {id}: the record at {start} is not the one its values make"
    );
    RecordAt {
        start,
        type_at: type_at.iter().map(|o| start + o).collect(),
        body_at: body_at.iter().map(|o| start + o).collect(),
        len: record.len(),
    }
}

/// The record of the row of `table` with rowid `id` (its INTEGER PRIMARY KEY is stored as NULL
/// in the record), with each column's offset in its header and in its body.
fn record_of(db: &Path, table: &str, id: i64) -> (Vec<u8>, Vec<usize>, Vec<usize>) {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let cols: Vec<(String, bool)> = conn
        .prepare(&format!("PRAGMA table_info({table})"))
        .expect("table_info")
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, i64>(5)? == 1 && r.get::<_, String>(2)? == "INTEGER",
            ))
        })
        .expect("columns")
        .collect::<Result<_, _>>()
        .expect("columns");
    let names: Vec<String> = cols.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let values: Vec<SqlValue> = conn
        .query_row(
            &format!("SELECT {} FROM {table} WHERE rowid = ?1", names.join(", ")),
            [id],
            |r| (0..cols.len()).map(|i| r.get::<_, SqlValue>(i)).collect(),
        )
        .expect("row");
    drop(conn);
    let mut types = Vec::new();
    let mut body = Vec::new();
    let mut header_cols = Vec::new();
    let mut body_offsets = Vec::new();
    for ((_, is_rowid), v) in cols.iter().zip(&values) {
        let (t, b) = if *is_rowid {
            (0, Vec::new())
        } else {
            serial(v)
        };
        header_cols.push(types.len());
        sqlite_varint(t, &mut types);
        body_offsets.push(body.len());
        body.extend_from_slice(&b);
    }
    // The header's size includes its own varint (one byte for these tables).
    let header_len = types.len() + 1;
    assert!(header_len < 128, "header too long for this helper");
    let mut record = vec![header_len as u8];
    record.extend_from_slice(&types);
    record.extend_from_slice(&body);
    let body_at = body_offsets.iter().map(|o| header_len + o).collect();
    let type_at = header_cols.iter().map(|c| 1 + c).collect();
    (record, type_at, body_at)
}

/// The rowid of the cell that ends at the last byte of the file, when the last page is a
/// table b-tree leaf whose last cell fills it to its end (no overflow page).
fn rowid_at_end(db: &Path) -> Option<i64> {
    let file = std::fs::read(db).expect("read db");
    let page_size = scalar(db, "PRAGMA page_size") as usize;
    let page = &file[file.len().checked_sub(page_size)?..];
    // Table b-tree leaf: type 13, cell count at 3, cell pointers after the 8-byte header.
    if page[0] != 13 {
        return None;
    }
    let cells = usize::from(u16::from_be_bytes([page[3], page[4]]));
    let last = (0..cells)
        .map(|i| usize::from(u16::from_be_bytes([page[8 + 2 * i], page[9 + 2 * i]])))
        .max()?;
    let mut pos = last;
    let payload = read_sqlite_varint(page, &mut pos) as usize;
    let rowid = read_sqlite_varint(page, &mut pos) as i64;
    (pos + payload == page_size).then_some(rowid)
}

fn column_index(db: &Path, table: &str, column: &str) -> usize {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let names: Vec<String> = conn
        .prepare(&format!("PRAGMA table_info({table})"))
        .expect("table_info")
        .query_map([], |r| r.get::<_, String>(1))
        .expect("columns")
        .collect::<Result<_, _>>()
        .expect("columns");
    names
        .iter()
        .position(|n| n == column)
        .unwrap_or_else(|| panic!("no column {column} in {table}: {names:?}"))
}

fn xor_byte(db: &Path, at: usize, mask: u8) {
    let mut file = std::fs::read(db).expect("read db");
    file[at] ^= mask;
    std::fs::write(db, file).expect("write db");
}

fn scalar(db: &Path, sql: &str) -> i64 {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// What every damaged copy must answer.

/// Runs `query --json` over every event of the damaged copy and checks the answer: exit 5,
/// the readable rows exactly as the undamaged store has them, the rest counted on stderr and
/// in a final `unreadable` record. Returns (the readable events, the number skipped).
fn damaged_answer(copy: &Path) -> (Vec<Value>, u64) {
    let f = fixture();
    let (code, out, err) = query(copy, &["--limit", "100000000"]);
    assert_eq!(
        code, 5,
        "a damaged store must exit 5 (corrupt); stderr: {err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    let (last, events) = lines
        .split_last()
        .unwrap_or_else(|| panic!("no output at all; stderr: {err}"));
    let summary: Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(
        s(&summary, "op"),
        "unreadable",
        "the answer must end with the unreadable record: {last}"
    );
    let skipped = summary["skipped"].as_u64().expect("skipped count");
    assert!(skipped >= 1, "{summary}");
    assert!(
        err.contains(&format!("{skipped} unreadable rows skipped"))
            || (skipped == 1 && err.contains("1 unreadable row skipped")),
        "stderr must say how many rows were skipped ({skipped}): {err}"
    );
    // Every printed event is exactly as stored, and printed and skipped add up to the whole.
    let reference: BTreeSet<&str> = f.all.iter().map(String::as_str).collect();
    for e in events {
        assert!(
            reference.contains(e),
            "an event the undamaged store does not have was printed: {e}"
        );
    }
    assert_eq!(
        events.len() as u64 + skipped,
        f.all.len() as u64,
        "printed + skipped must be every event"
    );
    let events = events
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    (events, skipped)
}

/// An event of the script with details (a write: `bytes`, `writes`, `first_write`) on file
/// `name`: its row id in the store.
fn write_event_id(db: &Path, name: &str) -> i64 {
    let f = fixture();
    let path = f.layer.join(name);
    let (code, out, err) = ctrwatch(&[
        OsStr::new("history"),
        path.as_os_str(),
        OsStr::new("--store"),
        db.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "{err}");
    let ev = json_lines(&out)
        .into_iter()
        .find(|v| s(v, "op") == "modify")
        .unwrap_or_else(|| panic!("no write event on {name}: {out}"));
    let t = humantime::parse_rfc3339(s(&ev, "time")).expect("time");
    let ns = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i64;
    // The row id is the time (plus `adj`, 0 unless two events shared a nanosecond).
    scalar(
        db,
        &format!("SELECT id FROM events WHERE id - adj = {ns} AND details IS NOT NULL"),
    )
}

// ---------------------------------------------------------------------------------------------
// The damage

#[test]
fn a_copy_truncated_by_one_byte_answers_with_the_rows_it_can_read_and_exits_5() {
    let copy = copy_of("truncated");
    let len = std::fs::metadata(&copy).expect("stat").len();
    // The file's last byte is the last byte of an event's row (the events table grows last
    // while the script runs), as in the issue: that row is the one the truncation damages.
    let victim = rowid_at_end(&copy)
        .expect("the store's last page is a table leaf whose last cell ends the file");
    let rec = locate(&copy, "events", victim);
    assert_eq!(
        (rec.start + rec.len) as u64,
        len,
        "the row ending the file is event {victim}'s"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .and_then(|f| f.set_len(len - 1))
        .expect("truncate");
    // SQLite itself finds nothing wrong: the missing byte reads as zero.
    let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    drop(conn);
    let (_, skipped) = damaged_answer(&copy);
    assert_eq!(skipped, 1, "the last byte belongs to one event row");
    let (_, out, _) = query(&copy, &["--limit", "100000000"]);
    let summary: Value = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    assert_eq!(
        summary["rows"][0]["id"].as_i64(),
        Some(victim),
        "the truncated row is the one reported: {summary}"
    );
    // The human table says the same on stderr, after the readable rows.
    let (code, out, err) = ctrwatch(&[
        OsStr::new("query"),
        OsStr::new("--store"),
        copy.as_os_str(),
        OsStr::new("--limit"),
        OsStr::new("100000000"),
    ]);
    assert_eq!(code, 5, "{err}");
    assert!(
        out.starts_with("TIME"),
        "the readable rows are printed: {out:.200}"
    );
    assert!(err.contains("1 unreadable row skipped"), "{err}");
}

#[test]
fn a_flipped_byte_in_a_details_blob_is_detected_not_returned() {
    let copy = copy_of("details");
    let id = write_event_id(&copy, "f700");
    let rec = locate(&copy, "events", id);
    let details = column_index(&copy, "events", "details");
    // The blob's first byte is a tag (the containerd object's); flip a byte of a value in
    // the middle, which decodes into a different but plausible value.
    let blob_len = scalar(
        &copy,
        &format!("SELECT length(details) FROM events WHERE id = {id}"),
    ) as usize;
    xor_byte(&copy, rec.body_at[details] + blob_len / 2, 0x01);
    let (events, skipped) = damaged_answer(&copy);
    assert_eq!(skipped, 1);
    let f700 = fixture().layer.join("f700");
    assert!(
        !events
            .iter()
            .any(|e| s(e, "op") == "modify" && s(e, "path") == f700.to_str().unwrap_or("")),
        "the damaged write on f700 must not be printed"
    );
    // history reads rows by id (the other path through the reader): same verdict.
    let (code, out, err) = ctrwatch(&[
        OsStr::new("history"),
        f700.as_os_str(),
        OsStr::new("--store"),
        copy.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 5, "{err}");
    let lines = json_lines(&out);
    assert_eq!(
        lines.len(),
        2,
        "the create, then the unreadable record: {out}"
    );
    assert_eq!(s(&lines[0], "op"), "create", "{out}");
    assert_eq!(s(&lines[1], "op"), "unreadable", "{out}");
    assert!(err.contains("1 unreadable row skipped"), "{err}");
}

#[test]
fn a_flipped_path_id_is_detected_not_returned_as_another_file() {
    let copy = copy_of("path-id");
    let id = write_event_id(&copy, "f800");
    let rec = locate(&copy, "events", id);
    let path = column_index(&copy, "events", "path");
    let old = scalar(&copy, &format!("SELECT path FROM events WHERE id = {id}"));
    // The path id's last byte: the row now names another file (an existing one).
    let at = rec.body_at[path + 1] - 1;
    xor_byte(&copy, at, 0x01);
    let new = scalar(&copy, &format!("SELECT path FROM events WHERE id = {id}"));
    assert_ne!(old, new);
    assert_eq!(
        scalar(
            &copy,
            &format!("SELECT count(*) FROM names WHERE id = {new}")
        ),
        1,
        "the flipped id names another stored path"
    );
    let (_, skipped) = damaged_answer(&copy);
    assert_eq!(skipped, 1);
}

#[test]
fn a_flipped_column_type_is_corruption_exit_5_not_a_conversion_error() {
    let copy = copy_of("type");
    let id = write_event_id(&copy, "f900");
    let rec = locate(&copy, "events", id);
    let result = column_index(&copy, "events", "result");
    // `result` is atom 1 ("ok"): serial type 9 (the integer 1). One bit makes it 13, an empty
    // text; the record's layout is unchanged.
    let at = rec.type_at[result];
    let file = std::fs::read(&copy).expect("read");
    assert_eq!(
        file[at], 9,
        "result column of {id} at {at} (record {})",
        rec.len
    );
    xor_byte(&copy, at, 0x04);
    let (_, skipped) = damaged_answer(&copy);
    assert_eq!(skipped, 1);
}

#[test]
fn a_flipped_tid_in_a_process_row_is_detected_not_returned() {
    let copy = copy_of("tid");
    // The script's shell: the process with the most events.
    let proc_id = scalar(
        &copy,
        &format!(
            "SELECT proc FROM events WHERE proc IN (SELECT id FROM procs WHERE comm = '{SCRIPT}') \
             GROUP BY proc ORDER BY count(*) DESC LIMIT 1"
        ),
    );
    let tid = scalar(
        &copy,
        &format!("SELECT tid FROM procs WHERE id = {proc_id}"),
    );
    let its_events = scalar(
        &copy,
        &format!("SELECT count(*) FROM events WHERE proc = {proc_id}"),
    ) as u64;
    let rec = locate(&copy, "procs", proc_id);
    let tid_col = column_index(&copy, "procs", "tid");
    // tid's last byte (big-endian), one bit flipped: the lowest bit that gives a tid no
    // process in the store has (tid ^ 1 is often the script's next subshell, whose events
    // would then rightly show it).
    let mask = [0x01u8, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80]
        .into_iter()
        .find(|m| {
            scalar(
                &copy,
                &format!(
                    "SELECT count(*) FROM procs WHERE tid = {}",
                    tid ^ i64::from(*m)
                ),
            ) == 0
        })
        .expect("a bit of the tid's last byte that makes an unused tid");
    let flipped = tid ^ i64::from(mask);
    xor_byte(&copy, rec.body_at[tid_col + 1] - 1, mask);
    assert_eq!(
        scalar(
            &copy,
            &format!("SELECT tid FROM procs WHERE id = {proc_id}")
        ),
        flipped
    );
    let (events, skipped) = damaged_answer(&copy);
    assert_eq!(
        skipped, its_events,
        "every event of that process is skipped"
    );
    assert!(
        !events
            .iter()
            .any(|e| process(e, "tid").as_i64() == Some(flipped)),
        "the flipped tid must never be printed"
    );
    assert!(
        events.iter().any(|e| s(e, "op") == "unlink"),
        "the other processes' events are still answered"
    );
}

// ---------------------------------------------------------------------------------------------
// Query flags

#[test]
fn bad_globs_in_string_filters_are_usage_errors_like_path() {
    let store = &fixture().store;
    for flag in ["--path", "--exe", "--comm", "--unit"] {
        let (code, out, err) = query(store, &[flag, "["]);
        assert_eq!(code, 2, "{flag} '[': {out} {err}");
        assert!(err.contains("glob"), "{flag}: {err}");
    }
    // A good glob still works.
    let (code, out, err) = query(store, &["--comm", "rowmak*", "--limit", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_lines(&out).len(), 3, "{out}");
}

#[test]
fn limit_zero_is_a_usage_error_and_huge_limits_are_clamped() {
    let f = fixture();
    let (code, out, err) = query(&f.store, &["--limit", "0"]);
    assert_eq!(code, 2, "--limit 0: {out} {err}");
    assert!(err.contains("--limit"), "{err}");
    assert!(out.is_empty(), "{out}");
    for huge in [
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "99999999999999999999999999",
    ] {
        let (code, out, err) = query(&f.store, &["--limit", huge]);
        assert_eq!(code, 0, "--limit {huge}: {err}");
        assert_eq!(out.lines().count(), f.all.len(), "--limit {huge}");
        for cmd in ["history", "who-deleted"] {
            let path = f.layer.join("f4");
            let (code, _, err) = ctrwatch(&[
                OsStr::new(cmd),
                path.as_os_str(),
                OsStr::new("--store"),
                f.store.as_os_str(),
                OsStr::new("--limit"),
                OsStr::new(huge),
            ]);
            assert_eq!(code, 0, "{cmd} --limit {huge}: {err}");
        }
    }
}
