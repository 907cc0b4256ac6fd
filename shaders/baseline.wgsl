// baseline.wgsl: what the kernels are measured against (bench only).
//
//   copy_vec4:      dst = src, 16 bytes per thread per trip: the shader copy
//                   floor. Traffic: reads and writes 4 bytes per element.
//   read_vec4:      one read of src (a per-thread sum, written once per
//                   thread so it cannot be optimised away): the read floor of
//                   the post-hoc sweep. Traffic: reads 4 bytes per element.
//   The unfused sequence a framework runs for
//   F.cross_entropy(f + b, y) forward and backward:
//   add_bias:       z = f + b_c.                      R 4, W 4 per element
//   log_softmax:    logp = z - LSE(z), per row.       R 8, W 4
//   nll:            l_i = -logp[i, y_i].              per row only
//   nll_backward:   gl = -g/N at y_i, 0 elsewhere.    W 4
//   log_softmax_bw: gz = gl - exp(logp) sum_c gl.     R 8, W 4
//   (add_bias backward is the identity.) In all: 20 bytes read and 16
//   written per element, against the fused kernel's 8 and 4.
//
// Workgroup layout: element kernels are grid-stride, 64 threads per
// workgroup; row kernels (log_softmax, log_softmax_bw) run one workgroup of
// 64 threads per row with a workgroup-memory tree. Barriers: after the
// partials are stored and per tree level, so each level reads complete sums.

struct Params {
    count: u32,     // elements (element kernels) or rows (row kernels)
    classes: u32,
    scale: f32,     // -g / N for nll_backward
    _pad: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> a: array<f32>;
@group(0) @binding(4) var<storage, read> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> labels: array<i32>;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn copy_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * WG;
    let trips = (params.count + stride - 1u) / stride;
    for (var k = 0u; k < trips; k++) {
        let i = k * stride + gid.x;
        if (i < params.count) {
            dst[i] = src[i];
        }
    }
}

@compute @workgroup_size(WG)
fn read_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * WG;
    let trips = (params.count + stride - 1u) / stride;
    var acc = vec4(0.0);
    for (var k = 0u; k < trips; k++) {
        let i = k * stride + gid.x;
        if (i < params.count) {
            acc += src[i];
        }
    }
    out[gid.x] = acc.x + acc.y + acc.z + acc.w;
}

@compute @workgroup_size(WG)
fn add_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * WG;
    let trips = (params.count + stride - 1u) / stride;
    for (var k = 0u; k < trips; k++) {
        let i = k * stride + gid.x;
        if (i < params.count) {
            out[i] = a[i] + b[i % params.classes];
        }
    }
}

fn tree_max(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] = max(red[tid], red[tid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn tree_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// logp = z - LSE(z): a = z, out = logp.
@compute @workgroup_size(WG)
fn log_softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let c_len = params.classes;
    let base = wid.x * c_len;
    let trips = (c_len + WG - 1u) / WG;
    // The lowest finite f32, written exactly (Tint rejects -3.4028235e38,
    // which lies past it before rounding).
    var m = -0x1.fffffep+127f;
    for (var k = 0u; k < trips; k++) {
        let c = k * WG + tid;
        if (c < c_len) {
            m = max(m, a[base + c]);
        }
    }
    m = tree_max(tid, m);
    var s = 0.0;
    for (var k = 0u; k < trips; k++) {
        let c = k * WG + tid;
        if (c < c_len) {
            s += exp(a[base + c] - m);
        }
    }
    let lse = m + log(tree_sum(tid, s));
    for (var k = 0u; k < trips; k++) {
        let c = k * WG + tid;
        if (c < c_len) {
            out[base + c] = a[base + c] - lse;
        }
    }
}

// l_i = -logp[i, y_i]: a = logp, out = l (per row).
@compute @workgroup_size(WG)
fn nll(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < params.count) {
        out[i] = -a[i * params.classes + u32(labels[i])];
    }
}

// gl = scale at y_i, 0 elsewhere: out = gl (N x C).
@compute @workgroup_size(WG)
fn nll_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * WG;
    let trips = (params.count + stride - 1u) / stride;
    for (var k = 0u; k < trips; k++) {
        let e = k * stride + gid.x;
        if (e < params.count) {
            let i = e / params.classes;
            let c = e % params.classes;
            out[e] = select(0.0, params.scale, i32(c) == labels[i]);
        }
    }
}

// gz = gl - exp(logp) * sum_c gl: a = gl, b = logp, out = gz.
@compute @workgroup_size(WG)
fn log_softmax_bw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let c_len = params.classes;
    let base = wid.x * c_len;
    let trips = (c_len + WG - 1u) / WG;
    var s = 0.0;
    for (var k = 0u; k < trips; k++) {
        let c = k * WG + tid;
        if (c < c_len) {
            s += a[base + c];
        }
    }
    let total = tree_sum(tid, s);
    for (var k = 0u; k < trips; k++) {
        let c = k * WG + tid;
        if (c < c_len) {
            out[base + c] = a[base + c] - exp(b[base + c]) * total;
        }
    }
}
