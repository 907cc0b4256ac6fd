// em.wgsl: one step of the EM estimate of an unknown test prior from
// unlabelled logits (Saerens, Latinne and Decaestecker, 2002; docs/MATH.md
// section 6): with s_c = log pi_test_c - log pi_train_c (the host's current
// estimate), the test posterior of row i is
//   q_ic = exp(f_ic + s_c - m_i) / sum_k exp(f_ik + s_k - m_i),   m_i = max_k (f_ik + s_k)
// and the next estimate is pi_test_c = (1/N) sum_i q_ic. This file forms the
// column sums sum_i q_ic; the host divides, checks convergence and writes
// the next s.
//
// em_partials: workgroup g owns rows [g * rows_per_group, ...) and takes
//   them 64 at a time. Phase 1, one thread per row: m_i and 1/denominator
//   (reads the row once). Phase 2, one thread per class (c = t, t + 64, ...):
//   adds q_ic over the 64 rows into partial[g * C + c], which only that
//   thread writes (reads the rows again, 64 consecutive classes per step).
//   Traffic per step: 2 reads of each logit, C partial writes per group.
// em_reduce: one thread per class sums its G partials in group order, so
//   the result does not depend on scheduling: the same bits every run.
//
// Barriers: phase 2 reads every row's m and 1/denominator, written by other
// threads in phase 1 (the first barrier); the next block's phase 1 rewrites
// them, so phase 2 must be done first (the second barrier).

struct Params {
    rows: u32,            // N
    classes: u32,         // C
    rows_per_group: u32,  // a multiple of 64
    groups: u32,          // G
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> shift: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;

var<workgroup> row_max: array<f32, WG>;
var<workgroup> row_inv: array<f32, WG>;

@compute @workgroup_size(WG)
fn em_partials(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let c_len = params.classes;
    let g = wid.x;
    let t = lid.x;
    let first = g * params.rows_per_group;
    let last = min(first + params.rows_per_group, params.rows);
    for (var c = t; c < c_len; c += WG) {
        partial[g * c_len + c] = 0.0;
    }
    for (var base = first; base < last; base += WG) {
        let row = base + t;
        var m = -3.0e38;
        var inv = 0.0;
        if (row < last) {
            for (var k = 0u; k < c_len; k++) {
                m = max(m, logits[row * c_len + k] + shift[k]);
            }
            var denom = 0.0;
            for (var k = 0u; k < c_len; k++) {
                denom += exp(logits[row * c_len + k] + shift[k] - m);
            }
            inv = 1.0 / denom;
        }
        row_max[t] = m;
        row_inv[t] = inv;
        workgroupBarrier();
        let count = min(WG, last - base);
        for (var c = t; c < c_len; c += WG) {
            var acc = 0.0;
            for (var r = 0u; r < count; r++) {
                acc += exp(logits[(base + r) * c_len + c] + shift[c] - row_max[r]) * row_inv[r];
            }
            partial[g * c_len + c] += acc;
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn em_reduce(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= params.classes) {
        return;
    }
    var acc = 0.0;
    for (var g = 0u; g < params.groups; g++) {
        acc += partial[g * params.classes + c];
    }
    sums[c] = acc;
}
