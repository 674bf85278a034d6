//! The bundled demo: pipeline `demo` (64×64 slices of synthetic phantoms), model preset
//! `sdseg-demo` and its default weights `testdata/demo-model/model.safetensors` (made with
//! `train-autoencoder` and `train` on phantoms, see `docs/demo-model.md`).
//!
//! The demo model's files are embedded in the binary (`super::assets`).
//!
//! The demo model is a toy trained on synthetic shapes, not a medical model. `run` therefore
//! decides once whether the model in use is the demo model ([`is_demo_model`]) and then warns
//! loudly, on stderr whatever `--quiet` says and in the report, for every input that is not a
//! demo phantom (`crate::phantom::looks_like_demo_phantom`: the phantom writers stamp
//! `PHANTOM_TAG` into the DICOM SeriesDescription and the NIfTI `descrip`).

use std::path::{Path, PathBuf};

use crate::model::config::SdsegConfig;
use crate::pipeline::config::Pipeline;

/// The demo pipeline's name.
pub const DEMO_PIPELINE: &str = "demo";
/// The demo model's preset.
pub const DEMO_PRESET: &str = "sdseg-demo";
/// Where the commands that build the demo model are documented.
pub const DEMO_DOCS: &str = "docs/demo-model.md";

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
        assert_eq!(
            default,
            super::super::assets::embedded_demo_dir().join("model.safetensors")
        );
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
