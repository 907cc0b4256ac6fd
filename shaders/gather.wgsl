// gather.wgsl: mini-batch assembly and the running loss for the GPU trainer.
//
//   gather:     Xb[i, :] = X[perm[start + i], :],  yb[i] = y[perm[start + i]]
//               for i < B. Traffic: reads B*D*4 bytes of features (a random
//               row order, each row contiguous) and B*8 bytes of indices and
//               labels; writes the same B*(D+1)*4 bytes.
//   accumulate: acc[0] += loss[0] (the loss pass's reduced loss), one
//               thread, so the epoch's running loss needs no host round trip
//               until the user asks for it. Traffic: 8 bytes.
//
// Workgroup layout: gather is grid-stride over the B*D elements, 64 threads
// per workgroup (any count of workgroups); accumulate is one thread. No
// barriers: no thread reads another's writes.

struct Params {
    rows: u32,      // B, rows in this batch
    dim: u32,       // D (features, with the appended constant 1)
    start: u32,     // offset of this batch in perm
    _pad: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> features: array<f32>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read> labels: array<i32>;
@group(0) @binding(4) var<storage, read_write> batch_features: array<f32>;
@group(0) @binding(5) var<storage, read_write> batch_labels: array<i32>;
// [denom, bad labels, reduced loss] of the loss pass
@group(0) @binding(6) var<storage, read> loss: array<f32>;
@group(0) @binding(7) var<storage, read_write> acc: array<f32>;

@compute @workgroup_size(WG)
fn gather(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let total = params.rows * params.dim;
    let stride = groups.x * WG;
    let trips = (total + stride - 1u) / stride;
    for (var k = 0u; k < trips; k++) {
        let e = k * stride + gid.x;
        if (e < total) {
            let i = e / params.dim;
            let d = e % params.dim;
            let src = perm[params.start + i];
            batch_features[e] = features[src * params.dim + d];
            if (d == 0u) {
                batch_labels[i] = labels[src];
            }
        }
    }
}

@compute @workgroup_size(1)
fn accumulate() {
    acc[0] += loss[0];
}
