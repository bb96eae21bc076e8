//! `--download` against a loopback HTTP server started by the test (no network is used): a synthetic
//! archive in the official CIFAR-10 layout, IDX `.gz` files, a corrupted download and a missing file.

use ntk_pipeline::data::download::{self, Remote, RemoteFile, Unpack, Verify};
use ntk_pipeline::data::{load_with, DataOptions, Locations, Split};
use ntk_pipeline::progress::Progress;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Serves `files` (path without the leading `/` → body) over HTTP/1.1 on 127.0.0.1 for at most
/// `max_requests` requests or 30 s, whichever comes first; the handle returns the paths requested.
fn serve(
    files: HashMap<String, Vec<u8>>,
    max_requests: usize,
) -> (String, JoinHandle<Vec<String>>) {
    serve_claiming(files, HashMap::new(), max_requests)
}

/// Like [`serve`], but the files named in `claimed` announce that Content-Length instead of their own
/// (a connection that drops before the body is complete).
fn serve_claiming(
    files: HashMap<String, Vec<u8>>,
    claimed: HashMap<String, usize>,
    max_requests: usize,
) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/data", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut requested = Vec::new();
        while requested.len() < max_requests && Instant::now() < deadline {
            let mut stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let key = path.strip_prefix("/data/").unwrap_or("");
            let reply = match files.get(key) {
                Some(body) => {
                    let h = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        claimed.get(key).copied().unwrap_or(body.len())
                    );
                    [h.into_bytes(), body.clone()].concat()
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&reply);
            requested.push(path);
        }
        requested
    });
    (base, handle)
}

/// Counts the bytes reported, to check the progress bar is fed.
#[derive(Default)]
struct Count {
    total: AtomicU64,
    advanced: AtomicU64,
}

impl Progress for Count {
    fn start(&self, _phase: &str, total: u64) {
        self.total.fetch_add(total, Ordering::Relaxed);
    }
    fn advance(&self, units: u64) {
        self.advanced.fetch_add(units, Ordering::Relaxed);
    }
    fn finish(&self) {}
}

/// CIFAR-10 records: label `i % 10`, pixels `(i + c + y + x) % 256`.
fn records(first: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in first..first + n {
        out.push((i % 10) as u8);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    out.push(((i + c + y + x) % 256) as u8);
                }
            }
        }
    }
    out
}

/// `cifar-10-binary.tar.gz` in the official layout: `cifar-10-batches-bin/` with five training batches
/// (3 records each here), the test batch (2 records), `batches.meta.txt` and `readme.html`.
fn cifar10_archive() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), data)
            .unwrap();
    };
    for b in 0..5 {
        add(&format!("data_batch_{}.bin", b + 1), &records(3 * b, 3));
    }
    add("test_batch.bin", &records(100, 2));
    add(
        "batches.meta.txt",
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
    );
    add("readme.html", b"<meta HTTP-EQUIV=\"REFRESH\" content=\"0; url=https://www.cs.toronto.edu/~kriz/cifar.html\">");
    tar.into_inner().unwrap().finish().unwrap()
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn cifar10_archive_download_verify_unpack_load() {
    let archive = cifar10_archive();
    let (base, server) = serve(
        HashMap::from([("cifar-10-binary.tar.gz".to_string(), archive.clone())]),
        1,
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let official = download::remote(ntk_pipeline::data::resolve::known("cifar10").unwrap());
    // The synthetic archive is not the official one: fetch it with its own checksum.
    let synthetic = Remote {
        files: vec![RemoteFile {
            md5: md5_hex(&archive),
            ..official.files[0].clone()
        }],
        ..official
    };
    let progress = Count::default();
    let dir = download::fetch("cifar10", &synthetic, Some(&base), &cache, &progress).unwrap();
    assert_eq!(server.join().unwrap(), vec!["/data/cifar-10-binary.tar.gz"]);
    assert_eq!(dir, cache.join("cifar10"));
    assert_eq!(progress.total.load(Ordering::Relaxed), archive.len() as u64);
    assert_eq!(
        progress.advanced.load(Ordering::Relaxed),
        archive.len() as u64
    );
    // Only the unpacked folder remains: no archive, no temporary folder.
    assert_eq!(entries(&cache), vec!["cifar10"]);
    assert_eq!(entries(&dir), vec!["cifar-10-batches-bin"]);
    let mut files = entries(&dir.join("cifar-10-batches-bin"));
    files.sort();
    assert_eq!(files.len(), 8, "{files:?}");
    // The cache is the last place looked in; the data is found there without --download.
    let locs = Locations::cache_only(&cache);
    let opts = DataOptions {
        split: Split::Train,
        ..Default::default()
    };
    let train = load_with("cifar10", &opts, &locs, &ntk_pipeline::progress::Silent).unwrap();
    assert_eq!(train.len(), 15);
    assert_eq!(train.labels()[14], 4);
    assert_eq!(
        train.raw_image(14).unwrap()[2 * 1024 + 3 * 32 + 5],
        14 + 2 + 3 + 5
    );
    let test = load_with(
        "cifar10",
        &DataOptions {
            split: Split::Test,
            ..opts
        },
        &locs,
        &ntk_pipeline::progress::Silent,
    );
    assert_eq!(test.unwrap().labels(), &[0, 1]);
}

#[test]
fn corrupted_download_is_refused_and_nothing_kept() {
    // Through the public path: --download with the official checksum, served a different archive.
    let (base, server) = serve(
        HashMap::from([("cifar-10-binary.tar.gz".to_string(), cifar10_archive())]),
        1,
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let locs = Locations {
        download_base: Some(base),
        ..Locations::cache_only(&cache)
    };
    let opts = DataOptions {
        split: Split::Train,
        data_dir: None,
        download: true,
    };
    let err = load_with("cifar10", &opts, &locs, &ntk_pipeline::progress::Silent).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("checksum mismatch") && msg.contains("c32a1d4ab5d03f1284b67883e8d87530"),
        "{msg}"
    );
    assert!(msg.contains("nothing was kept"), "{msg}");
    assert_eq!(err.exit_code(), 2);
    assert_eq!(server.join().unwrap().len(), 1);
    assert!(
        entries(&cache).is_empty(),
        "left behind: {:?}",
        entries(&cache)
    );
}

#[test]
fn idx_files_download_with_content_checksum_and_missing_file() {
    let idx = |magic: u32, dims: &[u32], data: &[u8]| {
        let mut v = magic.to_be_bytes().to_vec();
        dims.iter()
            .for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
        v.extend_from_slice(data);
        v
    };
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let images = idx(
        0x803,
        &[3, 2, 2],
        &(0..12).map(|k| k * 20).collect::<Vec<u8>>(),
    );
    let labels = idx(0x801, &[3], &[9, 0, 4]);
    let served = HashMap::from([
        ("t10k-images-idx3-ubyte.gz".to_string(), gz(&images)),
        ("t10k-labels-idx1-ubyte.gz".to_string(), gz(&labels)),
    ]);
    let (base, server) = serve(served, 3);
    let file = |name: &str, md5: String| RemoteFile {
        name: name.into(),
        md5,
        verify: Verify::Content,
        unpack: Unpack::Keep,
    };
    let remote = Remote {
        base_url: "unused".into(),
        files: vec![
            file("t10k-images-idx3-ubyte.gz", md5_hex(&images)),
            file("t10k-labels-idx1-ubyte.gz", md5_hex(&labels)),
        ],
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let silent = ntk_pipeline::progress::Silent;
    // Temporary folders of killed downloads: removed when older than a day, kept otherwise.
    for (name, age_h) in [(".download-old", 48u64), (".download-new", 1)] {
        std::fs::create_dir_all(cache.join(name)).unwrap();
        let when = std::time::SystemTime::now() - Duration::from_secs(age_h * 3600);
        std::fs::File::open(cache.join(name))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    download::fetch("fashion-mnist", &remote, Some(&base), &cache, &silent).unwrap();
    let mut left = entries(&cache);
    left.sort();
    assert_eq!(left, vec![".download-new", "fashion-mnist"]);
    std::fs::remove_dir(cache.join(".download-new")).unwrap();
    let opts = DataOptions {
        split: Split::Test,
        ..Default::default()
    };
    let d = load_with(
        "fashion-mnist",
        &opts,
        &Locations::cache_only(&cache),
        &silent,
    )
    .unwrap();
    assert_eq!(
        (d.len(), d.image_shape(), d.labels()),
        (3, [1, 2, 2], &[9u32, 0, 4][..])
    );
    assert_eq!(d.raw_image(2).unwrap(), &[160, 180, 200, 220]);
    // A file the server does not have: HTTP 404, clear message, nothing new in the cache.
    let missing = Remote {
        files: vec![file("train-images-idx3-ubyte.gz", "0".repeat(32))],
        ..remote
    };
    let msg = download::fetch("other", &missing, Some(&base), &cache, &silent)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("HTTP 404") && msg.contains("train-images-idx3-ubyte.gz"),
        "{msg}"
    );
    assert_eq!(entries(&cache), vec!["fashion-mnist"]);
    assert_eq!(server.join().unwrap().len(), 3);
}

#[test]
fn a_body_shorter_than_its_content_length_is_refused_and_nothing_kept() {
    // The server announces 4096 bytes more than it sends, then closes the connection: the download must
    // fail naming the file (never verify or unpack a partial file), and leave nothing in the cache.
    let archive = cifar10_archive();
    let claimed = archive.len() + 4096;
    let name = "cifar-10-binary.tar.gz".to_string();
    let (base, server) = serve_claiming(
        HashMap::from([(name.clone(), archive.clone())]),
        HashMap::from([(name.clone(), claimed)]),
        1,
    );
    let remote = Remote {
        base_url: "unused".into(),
        files: vec![RemoteFile {
            name: name.clone(),
            md5: md5_hex(&archive),
            verify: Verify::Download,
            unpack: Unpack::TarGz,
        }],
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let count = Count::default();
    let err = download::fetch("cifar10", &remote, Some(&base), &cache, &count).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&name), "{msg}");
    assert!(msg.contains("nothing was kept"), "{msg}");
    assert_eq!(err.exit_code(), 2, "{msg}");
    assert_eq!(count.total.load(Ordering::Relaxed), claimed as u64);
    assert_eq!(server.join().unwrap().len(), 1);
    assert!(
        entries(&cache).is_empty(),
        "left behind: {:?}",
        entries(&cache)
    );
}
