//! `logit-adjust check --export-webgpu DIR`: the GPU path's bound runs of
//! the conformance cells, as data for the browser harness
//! (`tests/webgpu/`): `manifest.json` (per cell: buffers, the steps with
//! their shader file, entry point, override constants, bindings and grid,
//! and what each output must be) and one binary blob per cell (initial
//! contents and reference values). The plans are made for a device with
//! WebGPU's default limits (the past-binding class: a 1 MiB storage
//! binding), which is what the browser's device has, so nothing in the
//! harness plans anything.

use std::collections::HashMap;
use std::path::Path;

use logit_adjust::conformance::{self, Cell, Devices, Dtype, Expected, Exported, KernelSet, Op};
use logit_adjust::trace::TracedStep;
use logit_adjust::Context;
use serde_json::{json, Value};

use crate::record;

/// The cells the browser replays: every bound op on the GPU path in f32,
/// over every shape class at full size.
fn cells() -> Vec<Cell> {
    conformance::matrix()
        .into_iter()
        .filter(|c| c.kernels == KernelSet::Gpu && c.dtype == Dtype::F32 && c.op.bound())
        .collect()
}

/// Buffers of one cell, numbered in order of first use, and the blob of
/// their initial contents and the reference values.
struct Writer {
    ids: HashMap<wgpu::Buffer, usize>,
    buffers: Vec<Value>,
    blob: Vec<u8>,
}

impl Writer {
    fn put(&mut self, bytes: &[u8]) -> Value {
        while !self.blob.len().is_multiple_of(8) {
            self.blob.push(0);
        }
        let at = self.blob.len();
        self.blob.extend_from_slice(bytes);
        json!([at, bytes.len()])
    }

    fn id(
        &mut self,
        ctx: &Context,
        buffer: &wgpu::Buffer,
        name: &str,
        init: Option<&[u8]>,
    ) -> usize {
        if let Some(&id) = self.ids.get(buffer) {
            return id;
        }
        let id = self.buffers.len();
        let init = init
            .map(<[u8]>::to_vec)
            .or_else(|| ctx.initial_contents(buffer))
            .map(|b| self.put(&b));
        self.buffers.push(json!({
            "id": id,
            "name": name,
            "size": buffer.size(),
            "init": init,
        }));
        self.ids.insert(buffer.clone(), id);
        id
    }
}

fn cell_json(ctx: &Context, e: &Exported, blob_name: &str) -> (Value, Vec<u8>) {
    let mut w = Writer {
        ids: HashMap::new(),
        buffers: Vec::new(),
        blob: Vec::new(),
    };
    for t in &e.tensors {
        w.id(ctx, &t.buffer, t.name, Some(&t.init));
    }
    let steps: Vec<Value> = e
        .steps
        .iter()
        .map(|step| match step {
            TracedStep::Clear {
                buffer,
                offset,
                size,
            } => json!({"clear": {"buffer": w.id(ctx, buffer, "op", None), "offset": offset, "size": size}}),
            TracedStep::Dispatch(d) => {
                let bindings: Vec<Value> = d
                    .bindings
                    .iter()
                    .map(|b| {
                        json!({
                            "binding": b.binding,
                            "kind": b.kind.webgpu_name(),
                            "buffer": w.id(ctx, &b.buffer, "op", None),
                            "offset": b.offset,
                            "size": b.size,
                        })
                    })
                    .collect();
                let constants: serde_json::Map<String, Value> = d
                    .constants
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                json!({
                    "shader": d.shader,
                    "entry": d.entry,
                    "constants": constants,
                    "bindings": bindings,
                    "grid": d.grid,
                })
            }
        })
        .collect();
    let expects: Vec<Value> = e
        .expects
        .iter()
        .map(|x| {
            let tensor = e
                .tensors
                .iter()
                .find(|t| t.name == x.output)
                .expect("every expectation names a tensor");
            let (kind, count, values) = match &x.values {
                Expected::F32(v) => ("f32", v.len(), w.put(bytemuck::cast_slice(v))),
                Expected::U32(v) => ("u32", v.len(), w.put(bytemuck::cast_slice(v))),
            };
            json!({
                "output": x.output,
                "buffer": w.ids[&tensor.buffer],
                "kind": kind,
                "count": count,
                "values": values,
                "abs": x.abs,
                "rel": x.rel,
                "exact_rows": x.exact_rows,
                "row_len": x.row_len,
            })
        })
        .collect();
    let value = json!({
        "label": e.cell.label(),
        "op": e.cell.op.name(),
        "shape": e.cell.shape.name(),
        "rows": e.rows,
        "classes": e.classes,
        "blob": blob_name,
        "buffers": w.buffers,
        "steps": steps,
        "expects": expects,
    });
    (value, w.blob)
}

/// Write the manifest and blobs of every exported cell into `dir`.
pub fn export(adapter: wgpu::Adapter, dir: &Path, seed: u64) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut devices = Devices::traced_with_limits(adapter, wgpu::Limits::default());
    let info = devices.info().clone();
    let mut cells_json = Vec::new();
    let mut shaders = std::collections::BTreeSet::new();
    for (k, cell) in cells().into_iter().enumerate() {
        let ctx = devices
            .context(KernelSet::Gpu, cell.shape.small_binding())
            .map_err(|e| e.to_string())?;
        let exported = conformance::export(&ctx, &cell, false, seed)
            .map_err(|e| format!("{}: {e}", cell.label()))?;
        for s in &exported.steps {
            if let TracedStep::Dispatch(d) = s {
                shaders.insert(d.shader);
            }
        }
        let blob_name = format!("cell-{k:03}.bin");
        let (value, blob) = cell_json(&ctx, &exported, &blob_name);
        std::fs::write(dir.join(&blob_name), blob).map_err(|e| format!("{blob_name}: {e}"))?;
        cells_json.push(value);
    }
    let ops: Vec<&str> = Op::ALL
        .iter()
        .filter(|o| o.bound())
        .map(|o| o.name())
        .collect();
    let manifest = json!({
        "version": record::VERSION,
        "build_commit": record::COMMIT,
        "exported_on": record::adapter_fields(&info),
        "limits": "WebGPU defaults; past_binding: 1 MiB storage binding",
        "seed": seed,
        "ops": ops,
        "shaders": shaders,
        "cells": cells_json,
    });
    let path = dir.join("manifest.json");
    std::fs::write(&path, manifest.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "exported {} cells ({} shader files) to {}",
        manifest["cells"].as_array().map_or(0, Vec::len),
        manifest["shaders"].as_array().map_or(0, Vec::len),
        dir.display()
    );
    Ok(())
}
