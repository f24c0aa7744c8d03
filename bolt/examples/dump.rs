//! Prints every bucket and value of a bbolt file, e.g.
//! `cargo run -p bolt --example dump -- /var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db`
//! (safe to run against a live containerd: the reader takes no lock).

use bolt::{Bucket, Db, Entry};

fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn dump(b: Bucket<'_>, indent: usize) -> Result<(), bolt::BoltError> {
    for e in b.iter() {
        match e? {
            Entry::Value(k, v) => println!("{:indent$}{} = {}", "", show(k), show(v)),
            Entry::Bucket(k, sub) => {
                println!("{:indent$}{}/", "", show(k));
                dump(sub, indent + 2)?;
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
    let result = Db::open(&path).and_then(|db| {
        let m = db.meta();
        println!(
            "# txid {} page size {} high-water mark {} freelist {:?} ({} bytes)",
            m.txid,
            m.page_size,
            m.high_water_mark,
            m.freelist,
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        );
        dump(db.root(), 0)
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
