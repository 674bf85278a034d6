//! The bundled demo: pipeline `demo` (64×64 slices of synthetic phantoms), model preset
//! `sdseg-demo` and its default weights `testdata/demo-model/model.safetensors` (made with
//! `train-autoencoder` and `train` on phantoms, see `docs/demo-model.md`).
//!
//! The demo model is embedded in the binary: `cargo install` copies only the binary, and the
//! README's first command must work from any folder after it. The built-in pipeline's
//! weights therefore name a file in the user's data folder ([`embedded_demo_dir`]), which
//! [`unpack_embedded`] writes (once per model version, atomically) before a run reads it.
//!
//! The demo model is a toy trained on synthetic shapes, not a medical model. `run` therefore
//! decides once whether the model in use is the demo model ([`is_demo_model`]) and then warns
//! loudly, on stderr whatever `--quiet` says and in the report, for every input that is not a
//! demo phantom (`crate::train::looks_like_demo_phantom`: the phantom writers stamp
//! `PHANTOM_TAG` into the DICOM SeriesDescription and the NIfTI `descrip`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::model::config::SdsegConfig;
use crate::pipeline::config::Pipeline;

/// The demo pipeline's name.
pub const DEMO_PIPELINE: &str = "demo";
/// The demo model's preset.
pub const DEMO_PRESET: &str = "sdseg-demo";
/// Where the commands that build the demo model are documented.
pub const DEMO_DOCS: &str = "docs/demo-model.md";

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
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
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

/// Is `pipeline` the demo pipeline (the built-in one or a copy of it)?
pub fn is_demo_pipeline(pipeline: &Pipeline) -> bool {
    pipeline.name == DEMO_PIPELINE || pipeline.model.preset == DEMO_PRESET
}

/// Is the model that runs the demo model? Yes when the weights are the demo pipeline's
/// default weights, when the config is the `sdseg-demo` preset (by `--model-config` or as the
/// pipeline's fallback, `preset_config`), or when the config has the demo architecture (a
/// `config.json` written by `train --preset sdseg-demo`). A safety warning hangs on this, so
/// it errs on the side of yes.
pub fn is_demo_model(
    pipeline: &Pipeline,
    weights: &Path,
    preset_config: Option<&str>,
    config: &SdsegConfig,
) -> bool {
    let default_weights = is_demo_pipeline(pipeline)
        && pipeline
            .default_weights()
            .is_some_and(|d| same_file(d, weights));
    default_weights || preset_config == Some(DEMO_PRESET) || has_demo_architecture(config)
}

/// The same network as the `sdseg-demo` preset (every parameter but the scale factor).
pub fn has_demo_architecture(config: &SdsegConfig) -> bool {
    let Ok(demo) = SdsegConfig::preset(DEMO_PRESET) else {
        return false;
    };
    let mut a = config.params.clone();
    let mut b = demo.params;
    a.scale_factor = None;
    b.scale_factor = None;
    // Dropout is a training setting: the network is the same.
    for p in [&mut a, &mut b] {
        p.unet_config.params.dropout = 0.0;
        p.first_stage_config.params.ddconfig.dropout = 0.0;
        p.cond_stage_config.params.ddconfig.dropout = 0.0;
        p.use_ema = true;
    }
    a == b
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// `a/pipelines/../testdata/x` → `a/testdata/x`, for messages (no file system access).
fn lexically_normal(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The usage error for a pipeline whose default weights are missing.
pub fn missing_weights_message(pipeline: &Pipeline, weights: &Path) -> String {
    let weights = lexically_normal(weights);
    if is_demo_pipeline(pipeline) {
        format!(
            "pipeline '{}': the demo model's weights {} do not exist. The demo model is not \
             part of this checkout yet: build it with the commands in {DEMO_DOCS} \
             (train-autoencoder, then train, on phantoms), or pass --weights FILE",
            pipeline.name,
            weights.display()
        )
    } else {
        format!(
            "pipeline '{}': its default weights {} do not exist; pass --weights FILE",
            pipeline.name,
            weights.display()
        )
    }
}

/// The warning recorded in a case's report entry (one line).
pub fn report_warning() -> String {
    "DEMO MODEL ON A NON-PHANTOM INPUT: the demo model (sdseg-demo) is a toy trained on \
     synthetic phantoms, not a medical model; these labels mean nothing for real CT"
        .to_string()
}

/// The multi-line warning printed on stderr for the first such case of a run.
pub fn banner(case_id: &str, input: &Path) -> String {
    let bar = "!".repeat(78);
    [
        bar.as_str(),
        "!! WARNING: DEMO MODEL ON AN INPUT THAT IS NOT A DEMO PHANTOM",
        &format!("!! case '{case_id}': {}", input.display()),
        "!! The demo model (pipeline 'demo', preset sdseg-demo) is a toy trained on",
        "!! synthetic phantoms (`sdseg-volume phantom`). It is NOT a medical model:",
        "!! its labels for real CT are meaningless and must not be used for anything.",
        "!! For real CT use an SDSeg checkpoint: --weights FILE --pipeline btcv|sts3d.",
        bar.as_str(),
    ]
    .join("\n")
}

/// The one-line reminder for later cases of the same run.
pub fn short_warning(case_id: &str) -> String {
    format!(
        "WARNING: case '{case_id}' is not a demo phantom either: the demo model's labels \
         for it are meaningless (see the warning above)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_model_is_recognised_by_weights_preset_or_architecture() {
        let demo = Pipeline::load("demo").unwrap();
        let btcv = Pipeline::load("btcv").unwrap();
        assert!(is_demo_pipeline(&demo) && !is_demo_pipeline(&btcv));
        let demo_cfg = SdsegConfig::preset("sdseg-demo").unwrap();
        let official = SdsegConfig::preset("sdseg-binary").unwrap();
        let default = demo.default_weights().unwrap().to_path_buf();
        assert_eq!(default, embedded_demo_dir().join("model.safetensors"));
        assert!(is_demo_model(&demo, &default, None, &official));
        assert!(!is_demo_model(&btcv, &default, None, &official));
        assert!(is_demo_model(
            &btcv,
            Path::new("w"),
            Some("sdseg-demo"),
            &official
        ));
        assert!(!is_demo_model(&demo, Path::new("w"), None, &official));
        // A config.json of the demo architecture (train writes the scale factor into it).
        let mut trained = demo_cfg.clone();
        trained.params.scale_factor = Some(0.7);
        trained.params.unet_config.params.dropout = 0.1;
        assert!(is_demo_model(&btcv, Path::new("w"), None, &trained));
        assert!(has_demo_architecture(&demo_cfg) && !has_demo_architecture(&official));
    }

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

    #[test]
    fn messages_name_the_file_and_the_docs() {
        let demo = Pipeline::load("demo").unwrap();
        let m = missing_weights_message(&demo, Path::new("/x/p/../model.safetensors"));
        assert!(
            m.contains("/x/model.safetensors") && m.contains(DEMO_DOCS),
            "{m}"
        );
        assert_eq!(
            lexically_normal(Path::new("../a/./b/../c")),
            PathBuf::from("../a/c")
        );
        let b = banner("c1", Path::new("/in/c1.nii.gz"));
        assert!(b.lines().count() >= 5 && b.contains("NOT a medical model") && b.contains("c1"));
    }
}
