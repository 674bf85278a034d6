//! Files the built-in pipelines name, embedded in the binary: `cargo install` copies only the
//! binary, and README's first command (the demo model on the demo series) must work from any
//! folder after it. The built-in `demo` pipeline's weights therefore name a file in the user's
//! data folder ([`embedded_demo_dir`]), which [`unpack_embedded`] writes (once per model
//! version, atomically) before a run reads it. Everything downstream (config beside the
//! weights, digests for the report, the demo-model check) sees an ordinary file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The demo model's files as the built-in `demo` pipeline names them (relative to
/// `pipelines/`), and their bytes, embedded at build time.
const EMBEDDED_DEMO_WEIGHTS: &str = "../testdata/demo-model/model.safetensors";
const EMBEDDED_DEMO_FILES: [(&str, &[u8]); 2] = [
    (
        "model.safetensors",
        include_bytes!("../../testdata/demo-model/model.safetensors"),
    ),
    (
        "config.json",
        include_bytes!("../../testdata/demo-model/config.json"),
    ),
];

/// Where the embedded demo model is unpacked: `$SDSEG_DATA_DIR`, else
/// `$XDG_DATA_HOME/sdseg-volume`, else `~/.local/share/sdseg-volume`, else the temp folder;
/// then a folder named after the model's digest, so that a new binary with a new demo model
/// never reads an old one.
pub fn embedded_demo_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let base = env("SDSEG_DATA_DIR")
            .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("sdseg-volume")))
            .or_else(|| env("HOME").map(|h| h.join(".local/share/sdseg-volume")))
            .unwrap_or_else(|| std::env::temp_dir().join("sdseg-volume"));
        let mut digest = Sha256::new();
        for (name, bytes) in EMBEDDED_DEMO_FILES {
            digest.update(name.as_bytes());
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(bytes);
        }
        let hex: String = digest.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        base.join(format!("demo-model-{hex}"))
    })
    .clone()
}

/// The path a built-in pipeline's relative file name stands for: the unpacked embedded demo
/// model for the demo weights, the source tree's `pipelines/` folder for anything else.
pub fn builtin_file(relative: &str, source_tree_dir: &Path) -> PathBuf {
    if relative == EMBEDDED_DEMO_WEIGHTS {
        embedded_demo_dir().join(EMBEDDED_DEMO_FILES[0].0)
    } else {
        source_tree_dir.join(relative)
    }
}

/// Before `weights` is read: if it is the embedded demo model's path, write the embedded
/// files there unless they are already present (temp file + rename, so that concurrent runs,
/// e.g. Slurm array tasks, never see a partial file). Any other path is left alone.
pub fn unpack_embedded(weights: &Path) -> std::io::Result<()> {
    let dir = embedded_demo_dir();
    if weights != dir.join(EMBEDDED_DEMO_FILES[0].0) {
        return Ok(());
    }
    let context = |what: &str, e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!(
                "unpacking the embedded demo model into {}: {what}: {e} \
                 (set SDSEG_DATA_DIR to a writable folder, or pass --weights FILE)",
                dir.display()
            ),
        )
    };
    std::fs::create_dir_all(&dir).map_err(|e| context("creating the folder", e))?;
    for (name, bytes) in EMBEDDED_DEMO_FILES {
        let path = dir.join(name);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            continue;
        }
        let mut tmp =
            tempfile::NamedTempFile::new_in(&dir).map_err(|e| context("a temp file", e))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| context(name, e))?;
        tmp.persist(&path).map_err(|e| context(name, e.error))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_demo_model_unpacks_once_and_equals_the_source_tree() {
        let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/demo-model");
        let weights = embedded_demo_dir().join("model.safetensors");
        unpack_embedded(&weights).unwrap();
        unpack_embedded(&weights).unwrap();
        for name in ["model.safetensors", "config.json"] {
            assert_eq!(
                std::fs::read(embedded_demo_dir().join(name)).unwrap(),
                std::fs::read(tree.join(name)).unwrap(),
                "{name}"
            );
        }
        // Other paths are never written.
        unpack_embedded(Path::new("/nonexistent/model.safetensors")).unwrap();
        assert!(!Path::new("/nonexistent").exists());
    }
}
