//! Prints every bucket and value of a bbolt file, e.g.
//! `cargo run -p bolt --example dump -- /var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db`
//! (safe to run against a live containerd: the reader takes no lock).

use std::io::{self, BufWriter, Write};

use bolt::{Bucket, Db, Entry};

fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn dump(
    out: &mut impl Write,
    b: Bucket<'_>,
    indent: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    for e in b.iter() {
        match e? {
            Entry::Value(k, v) => writeln!(out, "{:indent$}{} = {}", "", show(k), show(v))?,
            Entry::Bucket(k, sub) => {
                writeln!(out, "{:indent$}{}/", "", show(k))?;
                dump(out, sub, indent + 2)?;
            }
        }
    }
    Ok(())
}

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: dump FILE");
        std::process::exit(2);
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let result = Db::open(&path).map_err(Into::into).and_then(|db| {
        let m = db.meta();
        writeln!(
            out,
            "# txid {} page size {} high-water mark {} freelist {:?} ({} bytes)",
            m.txid,
            m.page_size,
            m.high_water_mark,
            m.freelist,
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        )?;
        dump(&mut out, db.root(), 0)?;
        out.flush()?;
        Ok(())
    });
    if let Err::<(), Box<dyn std::error::Error>>(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
