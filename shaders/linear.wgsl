// linear.wgsl: the linear classifier of the GPU trainer, logits = X W, with
// the bias folded in as W's last row against a constant-1 feature, and its
// SGD step with momentum and weight decay.
//
//   forward: out[i, c] = sum_d A[i, d] W[d, c]. Traffic per output: reads D
//            features and D weights (W is small and stays in cache); writes 4
//            bytes (2 for half logits).
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
// and the update reads W only at its own (d, c). The forward's outputs are
// units of LANES elements: one f32, or for half logits (the loader swaps in
// blocks/linear_formats.wgsl's block for the one between `>>> logits` and
// `<<< logits`) the u32 word of two halves, so a thread writes whole words
// and no two threads share one. Sums are f32; a half logit is the sum
// rounded once, to nearest even, and the update widens G exactly.

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
@group(0) @binding(5) var<storage, read_write> wgrad: array<f32>;

// >>> logits
@group(0) @binding(4) var<storage, read> g_logits: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// Elements per unit of `out`.
const LANES: u32 = 1u;

// Element e of G = dloss/dlogits.
fn dlogit(e: u32) -> f32 {
    return g_logits[e];
}

// Unit u of the logits: its LANES elements, v.x first.
fn store_logits(u: u32, v: vec2<f32>) {
    out[u] = v.x;
}
// <<< logits

@compute @workgroup_size(WG)
fn forward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let c_len = params.classes;
    let d_len = params.dim;
    let total = params.rows * c_len;
    let units = (total + LANES - 1u) / LANES;
    let stride = groups.x * WG;
    let trips = (units + stride - 1u) / stride;
    for (var k = 0u; k < trips; k++) {
        let u = k * stride + gid.x;
        if (u < units) {
            // A lane past the last element (odd N*C in halves) stays 0:
            // the padding half of the buffer's last word.
            var v = vec2<f32>(0.0);
            for (var l = 0u; l < LANES; l++) {
                let e = u * LANES + l;
                if (e < total) {
                    let i = e / c_len;
                    let c = e % c_len;
                    var sum = 0.0;
                    for (var d = 0u; d < d_len; d++) {
                        sum += a[i * d_len + d] * w[d * c_len + c];
                    }
                    v[l] = sum;
                }
            }
            store_logits(u, v);
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
                g += a[i * d_len + d] * dlogit(i * c_len + c);
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
