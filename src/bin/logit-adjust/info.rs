//! `logit-adjust info`: every adapter wgpu sees, and what the kernels can use.

use logit_adjust::adapters_from_env;
use serde_json::json;

pub fn run(as_json: bool) -> Result<(), String> {
    let adapters = adapters_from_env();
    if adapters.is_empty() {
        return Err(format!(
            "no GPU adapter found (WGPU_BACKEND={}); for Vulkan install mesa-vulkan-drivers and libvulkan1",
            std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "unset".into())
        ));
    }
    let mut rows = Vec::new();
    for adapter in &adapters {
        let info = adapter.get_info();
        let f = adapter.features();
        let l = adapter.limits();
        let compute = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
        rows.push(json!({
            "name": info.name,
            "backend": format!("{:?}", info.backend),
            "driver": info.driver,
            "driver_info": info.driver_info,
            "device_type": format!("{:?}", info.device_type),
            "compute_shaders": compute,
            "features": {
                "timestamp_query": f.contains(wgpu::Features::TIMESTAMP_QUERY),
                "timestamp_query_inside_passes": f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
                "subgroup": f.contains(wgpu::Features::SUBGROUP),
                "subgroup_size": [info.subgroup_min_size, info.subgroup_max_size],
                "shader_f16": f.contains(wgpu::Features::SHADER_F16),
            },
            "limits": {
                "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
                "max_buffer_size": l.max_buffer_size,
                "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
                "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
                "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
                "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
                "min_storage_buffer_offset_alignment": l.min_storage_buffer_offset_alignment,
                "max_uniform_buffer_binding_size": l.max_uniform_buffer_binding_size,
            },
        }));
    }
    if as_json {
        println!("{}", json!({ "adapters": rows }));
        return Ok(());
    }
    for (i, r) in rows.iter().enumerate() {
        let f = &r["features"];
        let l = &r["limits"];
        println!(
            "[{i}] {} ({}, {})",
            r["name"].as_str().unwrap_or(""),
            r["backend"].as_str().unwrap_or(""),
            r["device_type"].as_str().unwrap_or("")
        );
        println!(
            "    driver: {} {}",
            r["driver"].as_str().unwrap_or(""),
            r["driver_info"].as_str().unwrap_or("")
        );
        println!(
            "    compute: {}  timestamps: {} (inside passes: {})  subgroups: {} (size {})  f16: {}",
            r["compute_shaders"],
            f["timestamp_query"],
            f["timestamp_query_inside_passes"],
            f["subgroup"],
            f["subgroup_size"],
            f["shader_f16"]
        );
        println!(
            "    max storage binding: {} B  max buffer: {} B  storage buffers/stage: {}  workgroup storage: {} B  invocations/workgroup: {}  workgroups/dim: {}",
            l["max_storage_buffer_binding_size"], l["max_buffer_size"], l["max_storage_buffers_per_shader_stage"],
            l["max_compute_workgroup_storage_size"], l["max_compute_invocations_per_workgroup"],
            l["max_compute_workgroups_per_dimension"]
        );
    }
    Ok(())
}
