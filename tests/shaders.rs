//! Every WGSL file in `shaders/` must parse, validate, and translate for
//! every vendor's compiler path: SPIR-V (Vulkan), MSL (Metal), HLSL (DX12)
//! and GLSL ES 3.1 (GL). A shader that would fail on a backend this machine
//! cannot run fails here instead.

use std::path::Path;

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn shader_files() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected the shader files, found {files:?}"
    );
    files
}

/// The format variants the loader builds from the files (the half
/// formats' swapped blocks), as wgpu gets them.
fn variant_files() -> Vec<(String, String)> {
    let variants = logit_adjust::shader_variants().expect("variants splice");
    assert!(
        variants.len() >= 9,
        "expected the half variants, found {}",
        variants.len()
    );
    variants
        .into_iter()
        .map(|(l, t)| (l.to_string(), t))
        .collect()
}

/// The subgroup module: built only on devices with subgroups, never on GL.
fn needs_subgroups(file: &str) -> bool {
    file.contains("subgroup")
}

/// A native f16 variant: built only on devices with SHADER_F16, never on GL.
fn needs_f16(file: &str) -> bool {
    file.contains("f16 native")
}

fn validate(module: &naga::Module, what: &str) -> naga::valid::ModuleInfo {
    // Capabilities the device may grant; the shaders must not need more
    // (subgroups only in the module that is built where they exist).
    let mut caps = Capabilities::empty();
    if needs_subgroups(what) {
        caps |= Capabilities::SUBGROUP;
    }
    if needs_f16(what) {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    Validator::new(ValidationFlags::all(), caps)
        .validate(module)
        .unwrap_or_else(|e| panic!("{what}: validation failed: {e:?}"))
}

/// The workgroup sizes the host may pick for overridable shaders.
const WORKGROUP_SIZES: [f64; 4] = [32.0, 64.0, 256.0, 1024.0];

#[test]
fn every_shader_translates_for_every_backend() {
    for (file, source) in shader_files().into_iter().chain(variant_files()) {
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(&source)));
        let info = validate(&module, &file);
        assert!(!module.entry_points.is_empty(), "{file}: no entry points");
        for ep in &module.entry_points {
            for wg in WORKGROUP_SIZES {
                let mut constants = PipelineConstants::default();
                if module
                    .overrides
                    .iter()
                    .any(|(_, o)| o.name.as_deref() == Some("WG"))
                {
                    constants.insert("WG".to_string(), wg);
                }
                let what = format!("{file}:{} (WG {wg})", ep.name);
                let (module, _) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((ep.stage, &ep.name)),
                    &constants,
                )
                .unwrap_or_else(|e| panic!("{what}: overrides: {e:?}"));
                let info = validate(&module, &what);

                naga::back::spv::write_vec(
                    &module,
                    &info,
                    &naga::back::spv::Options::default(),
                    Some(&naga::back::spv::PipelineOptions {
                        shader_stage: ep.stage,
                        entry_point: ep.name.clone(),
                    }),
                )
                .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e:?}"));

                naga::back::msl::write_string(
                    &module,
                    &info,
                    &naga::back::msl::Options {
                        // Subgroup (SIMD-group) reductions need MSL 2.1.
                        lang_version: if needs_subgroups(&what) {
                            (2, 1)
                        } else {
                            (1, 0)
                        },
                        ..Default::default()
                    },
                    &naga::back::msl::PipelineOptions {
                        entry_point: Some((ep.stage, ep.name.clone())),
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{what}: MSL: {e:?}"));

                let mut hlsl = String::new();
                let hlsl_options = naga::back::hlsl::Options {
                    // Wave intrinsics need shader model 6.0.
                    shader_model: if needs_subgroups(&what) {
                        naga::back::hlsl::ShaderModel::V6_0
                    } else {
                        naga::back::hlsl::Options::default().shader_model
                    },
                    ..Default::default()
                };
                let hlsl_pipeline = naga::back::hlsl::PipelineOptions {
                    entry_point: Some((ep.stage, ep.name.clone())),
                };
                naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
                    .write(&module, &info, None)
                    .unwrap_or_else(|e| panic!("{what}: HLSL: {e:?}"));

                if needs_subgroups(&what) || needs_f16(&what) {
                    // GLSL ES has no subgroups and no f16; the GL path
                    // never builds either.
                    continue;
                }
                let mut glsl = String::new();
                let glsl_options = naga::back::glsl::Options::default(); // GLSL ES 3.10
                let glsl_pipeline = naga::back::glsl::PipelineOptions {
                    shader_stage: ep.stage,
                    entry_point: ep.name.clone(),
                    multiview: None,
                };
                naga::back::glsl::Writer::new(
                    &mut glsl,
                    &module,
                    &info,
                    &glsl_options,
                    &glsl_pipeline,
                    naga::proc::BoundsCheckPolicies::default(),
                )
                .and_then(|mut w| w.write())
                .unwrap_or_else(|e| panic!("{what}: GLSL: {e:?}"));
            }
        }
    }
}

#[test]
fn every_shader_opens_with_a_header_comment() {
    for (file, source) in shader_files() {
        let header: Vec<&str> = source.lines().take_while(|l| l.starts_with("//")).collect();
        assert!(header.len() >= 8, "{file}: header comment too short");
        let text = header.join("\n").to_lowercase();
        for topic in ["traffic", "workgroup", "barrier"] {
            assert!(
                text.contains(topic),
                "{file}: header does not mention {topic}"
            );
        }
    }
}
