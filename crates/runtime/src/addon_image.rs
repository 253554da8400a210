//! The addon image: an image of the running `rke2` itself, so the bundled
//! addons (DNS, later ingress and metrics) run as ordinary pods on a
//! machine that no registry serves.
//!
//! The image holds the binary as `/bin/rke2`, exactly the shared
//! libraries this process has loaded (read from `/proc/self/maps`, so
//! nothing is guessed from a library search path), the ELF interpreter
//! under the path the binary names, the CA bundle and a minimal `/etc`.
//! It is written as a `docker save` archive (what `ctr images import`
//! takes, as the air-gap folder's tarballs) with a fixed timestamp, so the
//! same binary always gives the same image digest.
//!
//! Its reference carries the binary's version ([`reference`]): an upgraded
//! binary brings a new tag, and pods of the old version keep theirs.
//! A node builds and imports it the first time a pod needs it
//! ([`AddonImage::ensure`]), the way a kubelet would pull an image, so a
//! node that never runs an addon never pays for the copy.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::RuntimeError;
use crate::images::ImageImporter;

/// The repository of the addon image (a name no registry resolves, so a
/// missing image can never be fetched from anywhere).
pub const REPOSITORY: &str = "rke2.local/rke2-addons";

/// The addon image reference of this binary: `rke2.local/rke2-addons:v<version>`.
pub fn reference() -> String {
    format!("{REPOSITORY}:v{}", env!("CARGO_PKG_VERSION"))
}

/// The CA bundle carried into the image when the machine has it.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One file of the image.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// A file copied from the machine (`source`) to `path` in the image.
    Copy {
        path: String,
        source: PathBuf,
        mode: u32,
    },
    /// A file with the given content.
    Content {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    /// A symbolic link.
    Link { path: String, target: String },
    /// A directory.
    Dir { path: String, mode: u32 },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Copy { path, .. }
            | Entry::Content { path, .. }
            | Entry::Link { path, .. }
            | Entry::Dir { path, .. } => path,
        }
    }
}

/// The shared objects named in a `/proc/<pid>/maps` text, in order of
/// first appearance (the vDSO and anonymous mappings have no path).
pub fn mapped_libraries(maps: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        if !path.starts_with('/') || line.ends_with(" (deleted)") {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or("");
        if !(name.ends_with(".so") || name.contains(".so.")) {
            continue;
        }
        let p = PathBuf::from(path);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The ELF interpreter (`PT_INTERP`) a 64-bit little-endian executable
/// names, or `None` for a static one.
pub fn elf_interpreter(mut exe: impl Read + Seek) -> Result<Option<String>, String> {
    let mut head = [0u8; 64];
    exe.read_exact(&mut head)
        .map_err(|e| format!("reading the ELF header: {e}"))?;
    if &head[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if head[4] != 2 || head[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().expect("8 bytes"));
    let phentsize = u64::from(u16_at(0x36));
    let phnum = u64::from(u16_at(0x38));
    if phentsize < 56 || phnum > 4096 {
        return Err("implausible program header table".into());
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        exe.seek(SeekFrom::Start(phoff + i * phentsize))
            .and_then(|_| exe.read_exact(&mut ph))
            .map_err(|e| format!("reading program header {i}: {e}"))?;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(ph[0..4].try_into().expect("4 bytes")) != PT_INTERP {
            continue;
        }
        let offset = u64::from_le_bytes(ph[8..16].try_into().expect("8 bytes"));
        let size = u64::from_le_bytes(ph[32..40].try_into().expect("8 bytes"));
        if size == 0 || size > 4096 {
            return Err("implausible PT_INTERP size".into());
        }
        let mut buf = vec![0u8; size as usize];
        exe.seek(SeekFrom::Start(offset))
            .and_then(|_| exe.read_exact(&mut buf))
            .map_err(|e| format!("reading PT_INTERP: {e}"))?;
        let s = String::from_utf8_lossy(&buf)
            .trim_end_matches('\0')
            .to_string();
        return Ok(Some(s));
    }
    Ok(None)
}

/// The files of the image of `exe`, given the libraries it has loaded and
/// the interpreter it names.
fn entries(
    exe: &Path,
    libs: &[PathBuf],
    interp: Option<&str>,
    ca: Option<&Path>,
    helm: Option<&Path>,
) -> Vec<Entry> {
    let mut v = vec![
        Entry::Dir {
            path: "bin".into(),
            mode: 0o755,
        },
        Entry::Copy {
            path: "bin/rke2".into(),
            source: exe.to_path_buf(),
            mode: 0o755,
        },
        Entry::Dir {
            path: "etc".into(),
            mode: 0o755,
        },
        Entry::Content {
            path: "etc/passwd".into(),
            data: b"root:x:0:0:root:/:/bin/rke2\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                .to_vec(),
            mode: 0o644,
        },
        Entry::Content {
            path: "etc/group".into(),
            data: b"root:x:0:\nnobody:x:65534:\n".to_vec(),
            mode: 0o644,
        },
        Entry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        },
    ];
    if let Some(helm) = helm {
        // The HelmChart Jobs (`rke2 helm-job`) run the real helm.
        v.insert(
            2,
            Entry::Copy {
                path: "bin/helm".into(),
                source: helm.to_path_buf(),
                mode: 0o755,
            },
        );
    }
    let mut dirs: Vec<String> = vec!["bin".into(), "etc".into(), "tmp".into()];
    let mut add_dirs = |v: &mut Vec<Entry>, path: &str| {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
                v.push(Entry::Dir {
                    path: acc.clone(),
                    mode: 0o755,
                });
            }
        }
    };
    for lib in libs {
        let path = lib.to_string_lossy().trim_start_matches('/').to_string();
        add_dirs(&mut v, &path);
        v.push(Entry::Copy {
            path,
            source: lib.clone(),
            mode: 0o755,
        });
    }
    if let Some(interp) = interp {
        let path = interp.trim_start_matches('/').to_string();
        if !v.iter().any(|e| e.path() == path) {
            // The loader is mapped under its real path (merged /usr); the
            // binary asks for it under the path it was linked with.
            let loaded = libs.iter().find(|l| {
                l.file_name().map(|n| n.to_string_lossy().into_owned())
                    == Path::new(interp)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
            });
            add_dirs(&mut v, &path);
            match loaded {
                Some(real) => v.push(Entry::Link {
                    path,
                    target: real.to_string_lossy().into_owned(),
                }),
                None => v.push(Entry::Copy {
                    path,
                    source: PathBuf::from(interp),
                    mode: 0o755,
                }),
            }
        }
    }
    if let Some(ca) = ca {
        let path = "etc/ssl/certs/ca-certificates.crt".to_string();
        add_dirs(&mut v, &path);
        v.push(Entry::Copy {
            path,
            source: ca.to_path_buf(),
            mode: 0o644,
        });
    }
    v
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // The path is set through `append_data`/`append_link`, which handle
    // long names.
    let _ = path;
    h
}

fn io_err<'a>(
    action: &'static str,
    p: &'a Path,
) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |e| RuntimeError::io(action, p, e)
}

/// Writes the layer tar of `entries` to `out`, returning its sha256.
fn write_layer(entries: &[Entry], out: &Path) -> Result<String, RuntimeError> {
    let file = File::create(out).map_err(io_err("creating", out))?;
    let mut w = Hashing {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
    };
    {
        let mut t = tar::Builder::new(&mut w);
        for e in entries {
            match e {
                Entry::Dir { path, mode } => {
                    let mut h = header(path, tar::EntryType::Directory, *mode, 0);
                    t.append_data(&mut h, format!("{path}/"), std::io::empty())
                        .map_err(io_err("writing", out))?;
                }
                Entry::Content { path, data, mode } => {
                    let mut h = header(path, tar::EntryType::Regular, *mode, data.len() as u64);
                    t.append_data(&mut h, path, data.as_slice())
                        .map_err(io_err("writing", out))?;
                }
                Entry::Copy { path, source, mode } => {
                    let f = File::open(source).map_err(io_err("reading", source))?;
                    let len = f.metadata().map_err(io_err("reading", source))?.len();
                    let mut h = header(path, tar::EntryType::Regular, *mode, len);
                    // A file that changes while it is read would give a
                    // corrupt layer; take exactly the length seen.
                    t.append_data(&mut h, path, BufReader::new(f).take(len))
                        .map_err(io_err("reading", source))?;
                }
                Entry::Link { path, target } => {
                    let mut h = header(path, tar::EntryType::Symlink, 0o777, 0);
                    t.append_link(&mut h, path, target)
                        .map_err(io_err("writing", out))?;
                }
            }
        }
        t.finish().map_err(io_err("writing", out))?;
    }
    w.flush().map_err(io_err("writing", out))?;
    Ok(hex::encode(w.hash.finalize()))
}

/// Writes the `docker save` archive of the image of `exe` (with the
/// libraries `libs` and the interpreter `interp`) to `out`, tagged
/// `reference`. Returns the layer's digest (`sha256:…`).
fn write_archive(
    exe: &Path,
    libs: &[PathBuf],
    interp: Option<&str>,
    ca: Option<&Path>,
    helm: Option<&Path>,
    reference: &str,
    out: &Path,
) -> Result<String, RuntimeError> {
    let layer_path = out.with_extension("layer");
    let files = entries(exe, libs, interp, ca, helm);
    let result = (|| {
        let layer = write_layer(&files, &layer_path)?;
        let lib_dirs: Vec<String> = {
            let mut d: Vec<String> = libs
                .iter()
                .filter_map(|l| l.parent().map(|p| p.to_string_lossy().into_owned()))
                .collect();
            d.dedup();
            d
        };
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let mut env = vec![
            "PATH=/bin".to_string(),
            format!("SSL_CERT_FILE=/{}", "etc/ssl/certs/ca-certificates.crt"),
        ];
        if !lib_dirs.is_empty() {
            env.push(format!("LD_LIBRARY_PATH={}", lib_dirs.join(":")));
        }
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {
                "Entrypoint": ["/bin/rke2"],
                "Env": env,
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer}")]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "rke2 addon image"}],
        });
        let config = serde_json::to_vec(&config).expect("JSON");
        let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
        let layer_name = format!("{layer}/layer.tar");
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_name,
            "RepoTags": [reference],
            "Layers": [layer_name],
        }]))
        .expect("JSON");
        let tmp = out.with_extension("tmp");
        {
            let f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            let mut t = tar::Builder::new(BufWriter::new(f));
            let mut put = |name: &str, data: &[u8]| {
                let mut h = header(name, tar::EntryType::Regular, 0o644, data.len() as u64);
                t.append_data(&mut h, name, data)
            };
            put(&config_name, &config).map_err(io_err("writing", &tmp))?;
            put("manifest.json", &manifest).map_err(io_err("writing", &tmp))?;
            let lf = File::open(&layer_path).map_err(io_err("reading", &layer_path))?;
            let len = lf.metadata().map_err(io_err("reading", &layer_path))?.len();
            let mut h = header(&layer_name, tar::EntryType::Regular, 0o644, len);
            t.append_data(&mut h, &layer_name, BufReader::new(lf).take(len))
                .map_err(io_err("writing", &tmp))?;
            t.into_inner()
                .and_then(|mut w| w.flush())
                .map_err(io_err("writing", &tmp))?;
        }
        std::fs::rename(&tmp, out).map_err(io_err("renaming", &tmp))?;
        Ok(format!("sha256:{layer}"))
    })();
    let _ = std::fs::remove_file(&layer_path);
    result
}

/// Writes the archive of the image of this very process to `out`, with
/// `helm` as `/bin/helm` when given.
pub fn write_own_archive(out: &Path, helm: Option<&Path>) -> Result<String, RuntimeError> {
    let self_exe = Path::new("/proc/self/exe");
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| RuntimeError::io("reading", Path::new("/proc/self/maps"), e))?;
    let libs = mapped_libraries(&maps);
    let interp = elf_interpreter(
        File::open(self_exe).map_err(|e| RuntimeError::io("reading", self_exe, e))?,
    )
    .map_err(|e| RuntimeError::Config(format!("/proc/self/exe: {e}")))?;
    let ca = Path::new(CA_BUNDLE);
    write_archive(
        self_exe,
        &libs,
        interp.as_deref(),
        ca.exists().then_some(ca),
        helm,
        &reference(),
        out,
    )
}

/// Builds and imports the addon image on first need, once per process.
pub struct AddonImage {
    importer: ImageImporter,
    scratch: PathBuf,
    helm: Option<PathBuf>,
    done: Mutex<bool>,
}

impl AddonImage {
    /// An addon image for the containerd at `socket`; the archive is
    /// written under `scratch` and removed after the import.
    pub fn new(socket: &Path, scratch: &Path) -> AddonImage {
        AddonImage {
            importer: ImageImporter::new(scratch, socket),
            scratch: scratch.to_path_buf(),
            helm: None,
            done: Mutex::new(false),
        }
    }

    /// Carries the helm binary at `path` into the image as `/bin/helm`
    /// (what the HelmChart Jobs run), when it exists at build time; without
    /// it those Jobs fail saying helm is missing.
    pub fn with_helm(mut self, path: PathBuf) -> AddonImage {
        self.helm = Some(path);
        self
    }

    /// Makes sure containerd has [`reference`]: builds the archive and
    /// imports it unless this process already did. Concurrent callers
    /// wait for the one build.
    pub async fn ensure(&self) -> Result<String, RuntimeError> {
        let mut done = self.done.lock().await;
        let reference = reference();
        if *done {
            return Ok(reference);
        }
        let started = std::time::Instant::now();
        std::fs::create_dir_all(&self.scratch)
            .map_err(|e| RuntimeError::io("creating", &self.scratch, e))?;
        let out = self.scratch.join("rke2-addons.tar");
        let o = out.clone();
        let helm = self.helm.clone().filter(|h| {
            let there = h.is_file();
            if !there {
                warn!(helm = %h.display(), "no helm binary there: the addon image is made without it, and HelmChart Jobs will fail until it is installed (scripts/install.sh --data-dir) and rke2 restarted");
            }
            there
        });
        let layer = tokio::task::spawn_blocking(move || write_own_archive(&o, helm.as_deref()))
            .await
            .map_err(|e| RuntimeError::Config(format!("building the addon image: {e}")))??;
        let imported = self.importer.import_file(&out).await;
        let _ = std::fs::remove_file(&out);
        let refs = imported?;
        if !refs.iter().any(|r| r == &reference) {
            return Err(RuntimeError::Command {
                command: format!("ctr images import {}", out.display()),
                message: format!("imported {refs:?}, not {reference}"),
            });
        }
        info!(image = %reference, %layer, took = ?started.elapsed(), "addon image built and imported");
        *done = true;
        Ok(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_come_from_the_maps_file_once_each() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fe:01 123 /usr/local/bin/rke2
7f0000000000-7f0000001000 r--p 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000001000-7f0000002000 r-xp 00001000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000003000-7f0000004000 r--p 00000000 fe:01 457 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
7f0000005000-7f0000006000 rw-p 00000000 00:00 0
7f0000007000-7f0000008000 r--p 00000000 fe:01 458 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7f0000009000-7f000000a000 r--p 00000000 fe:01 459 /usr/lib/locale/C.utf8/LC_CTYPE
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(
            mapped_libraries(maps),
            vec![
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_interpreter_is_read_from_this_test_binary() {
        let f = File::open("/proc/self/exe").unwrap();
        let interp = elf_interpreter(f).unwrap();
        // Rust test binaries on Linux link dynamically against glibc.
        let interp = interp.expect("a dynamically linked test binary");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert!(elf_interpreter(std::io::Cursor::new(b"#!/bin/sh\n".to_vec())).is_err());
        let mut junk = vec![0u8; 64];
        junk[..4].copy_from_slice(b"\x7fELF");
        junk[4] = 1;
        assert!(elf_interpreter(std::io::Cursor::new(junk)).is_err());
    }

    #[test]
    fn the_loader_is_linked_under_the_path_the_binary_names() {
        let libs = vec![
            PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        ];
        let e = entries(
            Path::new("/x/rke2"),
            &libs,
            Some("/lib64/ld-linux-x86-64.so.2"),
            None,
            Some(Path::new("/x/helm")),
        );
        assert!(e.contains(&Entry::Copy {
            path: "bin/helm".into(),
            source: PathBuf::from("/x/helm"),
            mode: 0o755,
        }));
        assert!(e.contains(&Entry::Link {
            path: "lib64/ld-linux-x86-64.so.2".into(),
            target: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
        }));
        assert!(e.contains(&Entry::Dir {
            path: "lib64".into(),
            mode: 0o755
        }));
        // Every directory comes before what it holds, once.
        let dirs: Vec<&str> = e
            .iter()
            .filter_map(|x| match x {
                Entry::Dir { path, .. } => Some(path.as_str()),
                _ => None,
            })
            .collect();
        let mut unique = dirs.clone();
        unique.dedup();
        assert_eq!(dirs.len(), unique.len());
        for (i, x) in e.iter().enumerate() {
            if let Some((parent, _)) = x.path().rsplit_once('/') {
                let at = e.iter().position(|d| d.path() == parent).unwrap();
                assert!(at < i, "{parent} after {}", x.path());
            }
        }
    }

    #[test]
    fn the_same_binary_gives_the_same_archive() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("prog");
        std::fs::write(&exe, b"\x7fELF not really").unwrap();
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        let d1 = write_archive(&exe, &[], None, None, None, "rke2.local/x:v1", &a).unwrap();
        let d2 = write_archive(&exe, &[], None, None, None, "rke2.local/x:v1", &b).unwrap();
        assert_eq!(d1, d2);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // The archive is what `ctr import` reads: manifest, config, layer.
        let mut names = Vec::new();
        let mut manifest = String::new();
        let mut t = tar::Archive::new(File::open(&a).unwrap());
        for e in t.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name == "manifest.json" {
                e.read_to_string(&mut manifest).unwrap();
            }
            names.push(name);
        }
        assert_eq!(names.len(), 3, "{names:?}");
        let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(m[0]["RepoTags"][0], "rke2.local/x:v1");
        assert_eq!(
            m[0]["Layers"][0],
            format!("{}/layer.tar", d1.trim_start_matches("sha256:"))
        );
        // No scratch files are left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, vec!["a.tar", "b.tar", "prog"]);
    }

    #[test]
    fn a_missing_source_file_is_named_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.tar");
        let err = write_archive(
            &dir.path().join("gone"),
            &[],
            None,
            None,
            None,
            "rke2.local/x:v1",
            &out,
        )
        .unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_reference_carries_the_version() {
        assert_eq!(
            reference(),
            format!("rke2.local/rke2-addons:v{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
