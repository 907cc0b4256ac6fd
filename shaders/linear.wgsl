// linear.wgsl: the linear classifier of the GPU trainer, logits = X W, with
// the bias folded in as W's last row against a constant-1 feature, and its
// SGD step with momentum and weight decay.
//
//   forward: out[i, c] = sum_d A[i, d] W[d, c]. Traffic per output: reads D
//            features and D weights (W is small and stays in cache); writes 4
//            bytes.
//   update:  g[d, c] = sum_i A[i, d] G[i, c]   (G = dloss/dlogits of the batch)
//            v = momentum * v + g + wd * W      (no decay on the bias row)
//            W -= lr * v
//            or, with FLAG_WRITE_GRAD, wgrad[d, c] = g and no step (for checks).
//            Traffic per weight: reads B features and B gradients, reads and
//            writes W and v.
//
// Workgroup layout: both are grid-stride over their outputs (N*C or D*C),
// 64 threads per workgroup; each output's sum runs in a fixed order, so the
// same seed gives the same bits. No barriers: each thread owns its outputs,
// and the update reads W only at its own (d, c).

struct Params {
    rows: u32,       // N of A
    dim: u32,        // D
    classes: u32,    // C
    flags: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    _pad: u32,
}

const WG: u32 = 64u;
const FLAG_WRITE_GRAD: u32 = 1u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> velocity: array<f32>;
@group(0) @binding(4) var<storage, read> g_logits: array<f32>;
@group(0) @binding(5) var<storage, read_write> wgrad: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn forward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let c_len = params.classes;
    let d_len = params.dim;
    let total = params.rows * c_len;
    let stride = groups.x * WG;
    let trips = (total + stride - 1u) / stride;
    for (var k = 0u; k < trips; k++) {
        let e = k * stride + gid.x;
        if (e < total) {
            let i = e / c_len;
            let c = e % c_len;
            var sum = 0.0;
            for (var d = 0u; d < d_len; d++) {
                sum += a[i * d_len + d] * w[d * c_len + c];
            }
            out[e] = sum;
        }
    }
}

@compute @workgroup_size(WG)
fn update(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let c_len = params.classes;
    let d_len = params.dim;
    let total = d_len * c_len;
    let stride = groups.x * WG;
    let trips = (total + stride - 1u) / stride;
    for (var k = 0u; k < trips; k++) {
        let e = k * stride + gid.x;
        if (e < total) {
            let d = e / c_len;
            let c = e % c_len;
            var g = 0.0;
            for (var i = 0u; i < params.rows; i++) {
                g += a[i * d_len + d] * g_logits[i * c_len + c];
            }
            if ((params.flags & FLAG_WRITE_GRAD) != 0u) {
                wgrad[e] = g;
            } else {
                let decay = select(params.weight_decay, 0.0, d + 1u == d_len);
                let v = params.momentum * velocity[e] + g + decay * w[e];
                velocity[e] = v;
                w[e] = w[e] - params.lr * v;
            }
        }
    }
}
